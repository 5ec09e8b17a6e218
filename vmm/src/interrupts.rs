//! Interrupt delivery for devices through KVM: MSIs with KVM_SIGNAL_MSI, INTx lines as IOAPIC pins
//! with KVM_IRQ_LINE.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use devices::InterruptLine;
use iommu::{MsiMessage, MsiSender};
use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

/// Sends MSIs into the VM's in-kernel local APICs.
#[derive(Debug)]
pub struct KvmMsi {
    pub vm: Arc<VmFd>,
}

impl MsiSender for KvmMsi {
    fn send(&self, msg: MsiMessage) {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            log::debug!("MSI {msg:x?} not delivered: {e}");
        }
    }
}

/// A PCI INTx line wired to an IOAPIC pin (a GSI) that other devices may share: the pin is
/// asserted while any of its devices asserts it. The count of asserting devices lives under a lock
/// that also orders the KVM calls, so a raise and a lower from two devices cannot land reversed.
#[derive(Debug)]
pub struct KvmIrqLine {
    vm: Arc<VmFd>,
    gsi: u32,
    asserted: AtomicBool,
    shared: Arc<Mutex<u32>>,
}

impl KvmIrqLine {
    /// A device's line on `gsi`; `shared` is the pin's count, common to all devices on it.
    pub fn new(vm: Arc<VmFd>, gsi: u32, shared: Arc<Mutex<u32>>) -> Self {
        Self {
            vm,
            gsi,
            asserted: AtomicBool::new(false),
            shared,
        }
    }
}

impl InterruptLine for KvmIrqLine {
    fn set_level(&self, asserted: bool) {
        let mut count = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if self.asserted.swap(asserted, Ordering::SeqCst) == asserted {
            return;
        }
        *count = if asserted {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        let pin_changed = if asserted { *count == 1 } else { *count == 0 };
        if pin_changed && let Err(e) = self.vm.set_irq_line(self.gsi, asserted) {
            log::debug!("GSI {} not set: {e}", self.gsi);
        }
    }
}
