//! The fixed hardware registers of a hardware-reduced ACPI platform, as the FADT describes them: the
//! sleep control and status registers (S5 = power off) and the reset register.

use std::sync::Arc;

use crate::{BusDevice, ExitSink, GuestExit};

/// Offset of the FADT SLEEP_CONTROL_REG within the block.
pub const SLEEP_CONTROL: u64 = 0;
/// Offset of the FADT SLEEP_STATUS_REG within the block.
pub const SLEEP_STATUS: u64 = 1;
/// Offset of the FADT RESET_REG within the block.
pub const RESET_REGISTER: u64 = 2;
/// Length of the block.
pub const ACPI_PM_LEN: u64 = 4;
/// The value the FADT tells the OS to write to RESET_REG.
pub const RESET_VALUE: u8 = 1;
/// The SLP_TYP the DSDT's `_S5` object gives; written with SLP_EN it powers the VM off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// ACPI 6.5 section 4.8.3.7: SLP_EN is bit 5, SLP_TYPx bits 4:2 of the sleep control register.
const SLP_EN: u8 = 1 << 5;

/// The hardware-reduced sleep/reset register block.
pub struct AcpiPm {
    exit: Arc<dyn ExitSink>,
}

impl std::fmt::Debug for AcpiPm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpiPm").finish_non_exhaustive()
    }
}

impl AcpiPm {
    /// A block whose power-off and reset end the VM through `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status reads 0: the VM never wakes from a sleep state.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if value & SLP_EN != 0 && (value >> 2) & 7 == S5_SLEEP_TYPE => {
                self.exit.guest_exit(GuestExit::PowerOff)
            }
            RESET_REGISTER if value == RESET_VALUE => self.exit.guest_exit(GuestExit::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Exits(Mutex<Vec<GuestExit>>);
    impl ExitSink for Exits {
        fn guest_exit(&self, exit: GuestExit) {
            self.0.lock().unwrap().push(exit);
        }
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let exits = Arc::new(Exits::default());
        let mut pm = AcpiPm::new(exits.clone());
        pm.write(0x600, SLEEP_CONTROL, &[S5_SLEEP_TYPE << 2]); // no SLP_EN: nothing
        pm.write(0x600, SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported, nothing
        pm.write(0x600, SLEEP_CONTROL, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        pm.write(0x600, RESET_REGISTER, &[0]);
        pm.write(0x600, RESET_REGISTER, &[RESET_VALUE]);
        pm.write(0x600, 3, &[]);
        assert_eq!(
            *exits.0.lock().unwrap(),
            vec![GuestExit::PowerOff, GuestExit::Reset]
        );
    }
}
