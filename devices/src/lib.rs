//! Device models of the virtual machine: the port-I/O and MMIO buses, and the devices on them.
//!
//! Nothing here talks to KVM. Interrupts leave devices through trigger handles, [`InterruptLine`]s
//! and MSI senders, and a request from the guest to stop the VM (power off, reset, a test verdict)
//! goes to an [`ExitSink`]; the VMM implements them all.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod bus;
pub mod dma;
pub mod edu;
pub mod legacy;
pub mod pci;

pub use bus::{Bus, BusDevice, BusError};

/// Why the guest wants the VM to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 (soft off) through the FADT sleep-control register.
    PowerOff,
    /// A reset through the i8042 controller or the FADT reset register.
    Reset,
    /// The value the guest wrote to the debug-exit port (QEMU's isa-debug-exit convention).
    Verdict(u32),
}

/// Receives the guest's request to stop the VM. The first request wins; later ones are ignored.
pub trait ExitSink: Send + Sync {
    /// Records the request and wakes whoever waits for the VM to stop.
    fn guest_exit(&self, exit: GuestExit);
}

/// A level-triggered interrupt line (a PCI INTx pin) as the VMM wires it to the interrupt
/// controller.
pub trait InterruptLine: Send + Sync {
    /// Asserts (true) or deasserts (false) the line.
    fn set_level(&self, asserted: bool);
}
