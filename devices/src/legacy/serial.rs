//! COM1: vm-superio's 16550 UART, its interrupt an edge on an I/O APIC pin.

use std::io::Write;

use log::debug;
use vm_superio::Trigger;
use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::BusDevice;
use crate::ioapic::IoapicPin;

/// Raises the UART's interrupt: an edge on its I/O APIC pin (ISA IRQ 4 for COM1).
#[derive(Debug)]
pub struct IrqTrigger(pub IoapicPin);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.pulse();
        Ok(())
    }
}

/// Signals an event fd when the guest has read the last byte of the receive FIFO, so that whoever
/// feeds input knows when there is room again.
#[derive(Debug)]
pub struct RxDrained(pub EventFd);

impl SerialEvents for RxDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // The counter only saturates after 2^64 - 2 unread signals.
        let _ = self.0.write(1);
    }
}

/// A 16550 UART on the port-I/O bus; output goes to a writer.
pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, RxDrained, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    /// A UART that writes what the guest transmits to `out`, raises `irq` as the 16550 would, and
    /// signals `rx_drained` whenever the guest empties the receive FIFO.
    pub fn new(irq: IrqTrigger, rx_drained: RxDrained, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::with_events(irq, rx_drained, out),
        }
    }

    /// Queues input for the guest to receive; returns how many bytes fit the FIFO (the rest is the
    /// caller's to offer again after the next `rx_drained` signal).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(e) => {
                debug!("serial input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // The 16550 has byte registers only; wider accesses read the first register and float the rest.
        data.fill(0xff);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset))
            && let Err(e) = self.uart.write(reg, value)
        {
            debug!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ioapic::testing::edge_pin;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_bytes_and_raises_the_rx_interrupt() {
        let sink = Sink::default();
        let (pin, irqs) = edge_pin(4);
        let drained = EventFd::new(libc_nonblock()).unwrap();
        let mut s = Serial::new(
            IrqTrigger(pin),
            RxDrained(drained.try_clone().unwrap()),
            Box::new(sink.clone()),
        );
        for b in b"ok" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok");
        // Line status: transmitter empty (bit 5) so polling guests can proceed.
        let mut lsr = [0u8; 1];
        s.read(0x3f8, 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Enable the received-data interrupt (IER bit 0), then type a byte.
        s.write(0x3f8, 1, &[1]);
        irqs.take();
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert_eq!(irqs.triggers(), 1);
        assert!(drained.read().is_err(), "not drained while a byte waits");
        let mut rbr = [0u8; 1];
        s.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr[0], b'x');
        assert_eq!(drained.read().unwrap(), 1, "drained once the guest read it");
    }

    #[test]
    fn input_beyond_the_fifo_is_refused_not_lost() {
        let drained = RxDrained(EventFd::new(libc_nonblock()).unwrap());
        let mut s = Serial::new(
            IrqTrigger(edge_pin(4).0),
            drained,
            Box::new(std::io::sink()),
        );
        let input = [b'a'; 100];
        let taken = s.enqueue_input(&input);
        assert!(taken > 0 && taken < input.len());
        assert_eq!(s.enqueue_input(&input[taken..]), 0);
    }

    #[test]
    fn odd_offsets_and_sizes_do_not_panic() {
        let drained = RxDrained(EventFd::new(libc_nonblock()).unwrap());
        let mut s = Serial::new(
            IrqTrigger(edge_pin(4).0),
            drained,
            Box::new(std::io::sink()),
        );
        let mut wide = [0u8; 4];
        s.read(0x3f8, 300, &mut wide);
        s.write(0x3f8, 300, &[1, 2, 3, 4]);
        s.write(0x3f8, 0, &[]);
        s.read(0x3f8, 0, &mut []);
    }

    fn libc_nonblock() -> i32 {
        // EFD_NONBLOCK, so a test that expects no interrupt cannot hang.
        0o4000
    }
}
