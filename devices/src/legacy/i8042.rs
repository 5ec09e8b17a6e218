//! The i8042 keyboard controller, modelled by vm-superio, kept for its CPU-reset command (0xfe to
//! port 0x64), which guests use to reboot.

use std::sync::Arc;

use log::debug;
use vm_superio::Trigger;

use crate::{BusDevice, ExitSink, GuestExit};

/// Turns the controller's reset line into a guest exit.
struct ResetLine(Arc<dyn ExitSink>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.guest_exit(GuestExit::Reset);
        Ok(())
    }
}

/// The i8042 on ports 0x60 (data) and 0x64 (command/status). Register it at both ports.
pub struct I8042 {
    inner: vm_superio::I8042Device<ResetLine>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

/// The data port; the command port is 4 above it.
pub const I8042_DATA_PORT: u64 = 0x60;

impl I8042 {
    /// A controller whose reset command ends the VM through `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(ResetLine(exit)),
        }
    }

    fn register(base: u64, offset: u64) -> Option<u8> {
        u8::try_from(base.checked_add(offset)?.checked_sub(I8042_DATA_PORT)?).ok()
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), Some(reg)) = (data.first_mut(), Self::register(base, offset)) {
            *first = self.inner.read(reg);
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if let (Some(&value), Some(reg)) = (data.first(), Self::register(base, offset))
            && let Err(e) = self.inner.write(reg, value)
        {
            debug!("i8042 write failed: {e:?}");
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
    fn reset_command_requests_a_reset() {
        let exits = Arc::new(Exits::default());
        let mut dev = I8042::new(exits.clone());
        dev.write(0x64, 0, &[0xfe]);
        assert_eq!(*exits.0.lock().unwrap(), vec![GuestExit::Reset]);
    }

    #[test]
    fn other_commands_do_not_reset() {
        let exits = Arc::new(Exits::default());
        let mut dev = I8042::new(exits.clone());
        dev.write(0x64, 0, &[0x20]);
        let mut b = [0u8; 1];
        dev.read(0x60, 0, &mut b);
        dev.read(0x64, 0, &mut b);
        assert!(exits.0.lock().unwrap().is_empty());
    }
}
