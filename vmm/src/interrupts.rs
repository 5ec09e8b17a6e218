//! Interrupt delivery for devices through KVM: MSIs with KVM_SIGNAL_MSI, INTx lines as IOAPIC pins
//! with KVM_IRQ_LINE.

use std::sync::Arc;

use devices::edu::InterruptLine;
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

/// A PCI INTx line wired to an IOAPIC pin (a GSI).
#[derive(Debug)]
pub struct KvmIrqLine {
    pub vm: Arc<VmFd>,
    pub gsi: u32,
}

impl InterruptLine for KvmIrqLine {
    fn set_level(&self, asserted: bool) {
        if let Err(e) = self.vm.set_irq_line(self.gsi, asserted) {
            log::debug!("GSI {} not set: {e}", self.gsi);
        }
    }
}
