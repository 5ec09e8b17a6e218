//! The debug-exit port (QEMU's isa-debug-exit convention): a write of value v ends the VM, and the
//! VMM exits with status (v << 1) | 1. Test programs use it to report their verdict.

use std::sync::Arc;

use crate::{BusDevice, ExitSink, GuestExit};

/// The port kernel unit tests use (QEMU: `-device isa-debug-exit,iobase=0xf4,iosize=4`).
pub const EXIT_PORT: u64 = 0xf4;
/// Four bytes wide, as kernel unit tests configure it.
pub const EXIT_PORT_LEN: u64 = 4;

/// The exit port device.
pub struct ExitPort {
    exit: Arc<dyn ExitSink>,
}

impl std::fmt::Debug for ExitPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitPort").finish_non_exhaustive()
    }
}

impl ExitPort {
    /// A port that delivers the guest's verdict to `exit`.
    pub fn new(exit: Arc<dyn ExitSink>) -> Self {
        Self { exit }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        // As in QEMU, a write anywhere in the port's range, of any width, ends the VM.
        if data.is_empty() {
            return;
        }
        let mut value = [0u8; 4];
        for (dst, src) in value.iter_mut().zip(data) {
            *dst = *src;
        }
        self.exit
            .guest_exit(GuestExit::Verdict(u32::from_le_bytes(value)));
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
    fn writes_of_any_width_deliver_the_value() {
        let exits = Arc::new(Exits::default());
        let mut port = ExitPort::new(exits.clone());
        port.write(EXIT_PORT, 0, &[3]);
        port.write(EXIT_PORT, 0, &[0x34, 0x12]);
        port.write(EXIT_PORT, 0, &0x7fu32.to_le_bytes());
        port.write(EXIT_PORT, 2, &[9]);
        assert_eq!(
            *exits.0.lock().unwrap(),
            vec![
                GuestExit::Verdict(3),
                GuestExit::Verdict(0x1234),
                GuestExit::Verdict(0x7f),
                GuestExit::Verdict(9)
            ]
        );
    }
}
