//! vCPU register state at power-on: the boot vCPU's entry registers for each boot protocol, and the
//! FPU, MSRs and local-APIC LINT pins that every vCPU starts with.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::VcpuFd;

use crate::boot::{BootEntry, EntryMode};
use crate::gdt::{CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, GDT, segment};
use crate::layout::{BOOT_STACK_TOP, GDT_ADDR, PML4_ADDR};

/// Errors from setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Setting vCPU state failed.
    #[error("cannot set vCPU {what}: {source}")]
    Kvm {
        /// Which piece of state.
        what: &'static str,
        /// The ioctl's error.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than asked.
    #[error("KVM accepted only {0} of the boot MSRs")]
    Msrs(usize),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Puts the boot vCPU at `entry`: 32-bit protected mode with paging off (PVH, multiboot) or 64-bit
/// long mode on the identity map of the Linux boot protocol.
pub fn set_boot_entry(vcpu: &VcpuFd, entry: &BootEntry) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("sregs"))?;
    let (code, cr0, cr3, cr4, efer) = match entry.mode {
        EntryMode::Protected32 => (CODE32_SELECTOR, CR0_PE | CR0_ET, 0, 0, 0),
        EntryMode::Long64 => (
            CODE64_SELECTOR,
            CR0_PE | CR0_ET | CR0_PG,
            PML4_ADDR,
            CR4_PAE,
            EFER_LME | EFER_LMA,
        ),
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = segment(code);
    let data = segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = cr0;
    sregs.cr3 = cr3;
    sregs.cr4 = cr4;
    sregs.efer = efer;
    vcpu.set_sregs(&sregs).map_err(kvm("sregs"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        rax: entry.rax,
        rbx: entry.rbx,
        rsi: entry.rsi,
        rsp: if entry.mode == EntryMode::Long64 {
            BOOT_STACK_TOP
        } else {
            0
        },
        rbp: if entry.mode == EntryMode::Long64 {
            BOOT_STACK_TOP
        } else {
            0
        },
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

/// MSR numbers (Intel SDM vol. 4).
mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE bit 0: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6), so RAM is cacheable without
/// firmware having programmed variable ranges.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// The FPU, MSR and LAPIC state every vCPU starts with, as firmware would leave it.
pub fn set_power_on_state(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU"))?;

    let entries: Vec<kvm_msr_entry> = [
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (msr::IA32_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Msrs(0))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(Error::Msrs(set));
    }

    set_lint_pins(vcpu)
}

/// Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, 11.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_EXTINT: u32 = 0x700;
const DELIVERY_NMI: u32 = 0x400;

/// LINT0 set to ExtINT and LINT1 to NMI, the state a PC's firmware leaves (there is no 8259 to
/// drive LINT0; Linux reprograms both).
fn set_lint_pins(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("local APIC"))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, DELIVERY_EXTINT),
        (APIC_LVT_LINT1, DELIVERY_NMI),
    ] {
        let Some(reg) = lapic.regs.get_mut(offset..offset + 4) else {
            continue;
        };
        let mut bytes = [0u8; 4];
        for (dst, src) in bytes.iter_mut().zip(reg.iter()) {
            *dst = *src as u8;
        }
        let value = (u32::from_le_bytes(bytes) & !DELIVERY_MODE_MASK) | mode;
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// The power-on state as KVM holds it afterwards: LINT0 ExtINT, LINT1 NMI, the boot MSRs.
    #[test]
    fn power_on_state_reads_back_from_kvm() {
        let Ok(kvm) = Kvm::new() else {
            crate::skip(
                "regs::power_on_state_reads_back_from_kvm",
                "/dev/kvm is not available",
            );
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        set_power_on_state(&vcpu).unwrap();

        let lapic = vcpu.get_lapic().unwrap();
        let lvt = |offset: usize| {
            let b: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
            u32::from_le_bytes(b) & DELIVERY_MODE_MASK
        };
        assert_eq!(lvt(APIC_LVT_LINT0), DELIVERY_EXTINT);
        assert_eq!(lvt(APIC_LVT_LINT1), DELIVERY_NMI);

        let wanted = [msr::IA32_MISC_ENABLE, msr::IA32_MTRR_DEF_TYPE];
        let entries: Vec<kvm_msr_entry> = wanted
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 2);
        let values: Vec<u64> = msrs.as_slice().iter().map(|e| e.data).collect();
        assert_eq!(values[0] & MISC_ENABLE_FAST_STRING, MISC_ENABLE_FAST_STRING);
        assert_eq!(values[1], MTRR_DEF_TYPE_WB_ENABLED);
        // MXCSR is set too, but this project's software KVM (kvm_pvm) reads it back as 0 through
        // KVM_GET_FPU, so only the x87 control word is checked here.
        assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    }
}
