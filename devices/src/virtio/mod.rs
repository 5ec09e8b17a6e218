//! virtio 1.x devices (OASIS virtio 1.2) on the modern PCI transport: the transport in [`pci`],
//! the block device in [`block`], and what they share.
//!
//! A device model implements [`VirtioDevice`]: its type, queues, features, configuration space and
//! how it serves a queue. The transport owns everything else (feature negotiation, status, queue
//! setup, MSI-X and INTx, reset) and hands the device its queues through the device's DMA handle,
//! so a device never reaches guest memory any other way.

pub mod block;
pub mod pci;
#[doc(hidden)]
pub mod synthetic;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use virtio_queue::Queue;

use crate::pci::ConfigSpace;
use crate::pci::config::command;
use crate::pci::msix::Msix;
use crate::{InterruptLine, MsiVectors};

/// Feature bits of the transport (virtio 1.2, 6).
pub mod feature {
    /// VIRTIO_F_VERSION_1: a modern device.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_ACCESS_PLATFORM: the device's DMA goes through the platform's IOMMU.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
    /// VIRTIO_RING_F_INDIRECT_DESC: indirect descriptor tables.
    pub const INDIRECT_DESC: u64 = 1 << 28;
}

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// ACKNOWLEDGE: the guest found the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// DRIVER: the guest knows how to drive it.
    pub const DRIVER: u8 = 2;
    /// DRIVER_OK: the driver is ready; the device may use its queues.
    pub const DRIVER_OK: u8 = 4;
    /// FEATURES_OK: feature negotiation is complete (the device clears it to refuse).
    pub const FEATURES_OK: u8 = 8;
    /// DEVICE_NEEDS_RESET: the device hit an error it cannot recover from.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// FAILED: the driver gave up.
    pub const FAILED: u8 = 0x80;
}

/// "No vector" in the MSI-X vector registers.
pub const NO_VECTOR: u16 = 0xffff;

/// ISR status bits (virtio 1.2, 4.1.4.5).
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// A virtio device model, driven by the transport.
pub trait VirtioDevice: Send + 'static {
    /// The virtio device type (2: block).
    fn device_type(&self) -> u16;

    /// The largest size of each queue (powers of two); their count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Device feature bits (the transport adds VERSION_1, and ACCESS_PLATFORM behind an IOMMU).
    fn features(&self) -> u64;

    /// The bytes of the device-specific configuration space (virtio 1.2, 5.x.4).
    fn config(&self) -> &[u8];

    /// The driver accepted `features` (FEATURES_OK was set and the transport agreed).
    fn negotiated(&mut self, _features: u64) {}

    /// Serves the buffers the driver made available on `queue` (index `index`), reading and writing
    /// guest memory only through `mem`. One pass does a bounded amount of work, so one busy queue
    /// cannot hold the event loop; it says whether it stopped at that bound.
    fn serve<M: vm_memory::GuestMemory>(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &M,
    ) -> Served;

    /// The driver reset the device.
    fn reset(&mut self) {}
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Buffers were used (the driver may want an interrupt).
    pub used: bool,
    /// The pass stopped at its bound with buffers left: serve the queue again.
    pub more: bool,
}

/// A device's interrupts: MSI-X vectors when the driver enabled MSI-X, otherwise the ISR status
/// byte and the INTx line. Shared by the transport (configuration and table writes, ISR reads)
/// and the device's worker (queue interrupts).
pub struct Interrupts {
    msix: Mutex<Msix>,
    vectors: Arc<dyn MsiVectors>,
    intx: Arc<dyn InterruptLine>,
    isr: AtomicU8,
    /// INTx may not be asserted: MSI-X is on or the command register's INTx disable bit is set.
    intx_off: AtomicBool,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts")
            .field("isr", &self.isr)
            .finish_non_exhaustive()
    }
}

impl Interrupts {
    /// Interrupts through `msix` (routed and sent by `vectors`) or `intx`.
    pub fn new(msix: Msix, vectors: Arc<dyn MsiVectors>, intx: Arc<dyn InterruptLine>) -> Self {
        Self {
            msix: Mutex::new(msix),
            vectors,
            intx,
            isr: AtomicU8::new(0),
            intx_off: AtomicBool::new(false),
        }
    }

    fn msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals `vector` (MSI-X on) or sets `isr_bit` and asserts INTx (MSI-X off). The ISR and
    /// the line change under the MSI-X lock, so a driver's ISR read cannot slip between them.
    fn signal(&self, vector: u16, isr_bit: u8) {
        let mut msix = self.msix();
        if msix.enabled() {
            if vector != NO_VECTOR && msix.trigger(vector) {
                self.vectors.trigger(vector);
            }
        } else {
            self.isr.fetch_or(isr_bit, Ordering::SeqCst);
            if !self.intx_off.load(Ordering::SeqCst) {
                self.intx.set_level(true);
            }
        }
    }

    /// A used-buffer notification on a queue bound to `vector`.
    pub fn signal_queue(&self, vector: u16) {
        self.signal(vector, ISR_QUEUE);
    }

    /// A configuration-change notification on `vector`.
    pub fn signal_config(&self, vector: u16) {
        self.signal(vector, ISR_CONFIG);
    }

    /// A driver read of the ISR status: returns it, clears it and deasserts INTx.
    fn read_isr(&self) -> u8 {
        let _order = self.msix();
        let isr = self.isr.swap(0, Ordering::SeqCst);
        self.intx.set_level(false);
        isr
    }

    /// Reset: nothing pending, on INTx or in the MSI-X pending bits.
    fn reset(&self) {
        let mut msix = self.msix();
        msix.clear_pending();
        self.isr.store(0, Ordering::SeqCst);
        self.intx.set_level(false);
    }

    /// After a configuration-space write: MSI-X may have been enabled or unmasked, and INTx
    /// enabled or disabled (by MSI-X or the command register).
    fn control_written(&self, config: &ConfigSpace) {
        let mut msix = self.msix();
        let released = msix.control_written(config);
        let off = msix.enabled() || config.command() & command::INTX_DISABLE != 0;
        self.intx_off.store(off, Ordering::SeqCst);
        self.intx
            .set_level(!off && self.isr.load(Ordering::SeqCst) != 0);
        for v in released {
            self.vectors.trigger(v);
        }
    }

    fn table_read(&self, offset: u64, data: &mut [u8]) {
        self.msix().read(offset, data);
    }

    fn table_write(&self, offset: u64, data: &[u8]) {
        let mut msix = self.msix();
        let w = msix.write(offset, data);
        if let Some(v) = w.rerouted
            && let Some(msg) = msix.message(v)
        {
            self.vectors.set_route(v, msg);
        }
        if let Some(v) = w.released {
            self.vectors.trigger(v);
        }
    }

    fn owns(&self, offset: u64) -> bool {
        self.msix().owns(offset)
    }
}

#[cfg(test)]
mod tests;
