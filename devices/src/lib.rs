//! Device models of the virtual machine: the port-I/O and MMIO buses, and the devices on them.
//!
//! Nothing here talks to KVM. Interrupts leave devices through trigger handles, [`InterruptLine`]s
//! MSI vectors, and a request from the guest to stop the VM (power off, reset, a test verdict)
//! goes to an [`ExitSink`]; the VMM implements them all.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod bus;
pub mod dma;
pub mod edu;
pub mod ioapic;
pub mod legacy;
pub mod pci;
pub mod virtio;
pub mod vtd;

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

/// A device's MSI vectors as the VMM delivers them (with KVM: a GSI route and an irqfd per
/// vector). Masking and pending bits are the device's business; this only routes and sends.
pub trait MsiVectors: Send + Sync {
    /// Vector `vector` now sends `msg`.
    fn set_route(&self, vector: u16, msg: iommu::MsiMessage);

    /// Sends vector `vector` with its current route.
    fn trigger(&self, vector: u16);
}

/// Doorbells the VMM can serve without a vCPU exit (with KVM: ioeventfds). A device registers an
/// event for an MMIO address, so a guest write there signals the event, and unregisters it when
/// its BAR moves.
pub trait IoEvents: Send + Sync {
    /// Guest writes (of any size) to `addr` signal `event` from now on.
    fn register(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd);

    /// Undoes [`IoEvents::register`].
    fn unregister(&self, addr: u64, event: &vmm_sys_util::eventfd::EventFd);
}
