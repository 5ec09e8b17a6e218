//! The CPU model: `kvm-host`.
//!
//! Every vCPU gets the host CPU as KVM can virtualise it (KVM_GET_SUPPORTED_CPUID), with:
//! - a synthetic topology: one socket, one core per vCPU, one thread per core; APIC id = vCPU index
//!   (leaf 0x1 EBX, leaf 0x4 EAX[31:26], leaf 0xB and, when the host has it, leaf 0x1F). These are
//!   the leaves Intel CPUs and Linux's Intel paths read; on AMD hosts the AMD topology leaves
//!   (0x8000_0008 ECX, 0x8000_001E) still carry KVM's values, which is not yet reconciled;
//! - the hypervisor bit (leaf 0x1 ECX[31]) set, and KVM's signature leaves kept;
//! - TSC-deadline (leaf 0x1 ECX[24]) offered when KVM emulates it on the in-kernel LAPIC;
//! - masked, because the VMM does not provide them: MONITOR/MWAIT (leaf 0x1 ECX[3]), VMX and SMX
//!   (ECX[5], ECX[6]: no nested virtualisation), EIST and TM2 (ECX[7], ECX[8]: no power management
//!   MSRs), the thermal and power leaf 0x6 except ARAT, and the architectural PMU (leaf 0xA zeroed).
//!
//! On hardware KVM the guest sees exactly this. On a software KVM that ignores KVM_SET_CPUID2 it
//! sees the host's values; what KVM holds is still this model (read back with KVM_GET_CPUID2).

use kvm_bindings::{CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

/// The model's name, for logs and --help.
pub const MODEL_NAME: &str = "kvm-host";

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_THERMAL_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_MONITOR: u32 = 1 << 3;
const ECX_VMX: u32 = 1 << 5;
const ECX_SMX: u32 = 1 << 6;
const ECX_EIST: u32 = 1 << 7;
const ECX_TM2: u32 = 1 << 8;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0x6 EAX[2]: the APIC timer keeps running in deep C-states.
const EAX_ARAT: u32 = 1 << 2;

/// Topology level types of leaf 0xB/0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to hold ids 0..n-1.
fn id_bits(n: u32) -> u32 {
    u32::BITS - n.saturating_sub(1).leading_zeros()
}

/// The entries of vCPU `index` (its APIC id) out of `count`, built from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8, tsc_deadline: bool) -> CpuId {
    let apic_id = u32::from(index);
    let count = u32::from(count.max(1));
    let core_bits = id_bits(count);
    let mut entries: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.as_slice().len() + 3);
    let mut has_v2 = false;
    for e in supported.as_slice() {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((1 << core_bits).min(255) << 16);
                e.ecx &= !(ECX_MONITOR | ECX_VMX | ECX_SMX | ECX_EIST | ECX_TM2);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1
                // (a core's private caches: one thread; the last level: every core).
                let level = (e.eax >> 5) & 7;
                // The fields are 6 and 12 bits wide.
                let cores = (count - 1).min(0x3f);
                let sharing = if level >= 3 {
                    (count - 1).min(0xfff)
                } else {
                    0
                };
                if e.eax & 0x1f != 0 {
                    e.eax = (e.eax & 0x3fff) | (cores << 26) | (sharing << 14);
                }
            }
            LEAF_THERMAL_POWER => {
                e.eax &= EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // Rebuilt below, one entry per sub-leaf.
            LEAF_TOPOLOGY => continue,
            LEAF_TOPOLOGY_V2 => {
                has_v2 = true;
                continue;
            }
            _ => {}
        }
        entries.push(e);
    }
    for leaf in std::iter::once(LEAF_TOPOLOGY).chain(has_v2.then_some(LEAF_TOPOLOGY_V2)) {
        entries.extend(topology_leaf(leaf, apic_id, count, core_bits));
    }
    // FamStructWrapper only fails beyond KVM_MAX_CPUID_ENTRIES, and we add at most one more sub-leaf
    // than KVM gave us; drop the tail rather than fail if a host ever reaches that limit.
    loop {
        match CpuId::from_entries(&entries) {
            Ok(cpuid) => return cpuid,
            Err(_) => {
                entries.pop();
            }
        }
    }
}

/// Extended topology enumeration (leaf 0xB or 0x1F): an SMT level of one thread, a core level of
/// `count` cores, and the terminating invalid level.
fn topology_leaf(function: u32, apic_id: u32, count: u32, core_bits: u32) -> [kvm_cpuid_entry2; 3] {
    let sub = |index: u32, eax: u32, ebx: u32, level: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        sub(0, 0, 1, LEVEL_SMT),
        sub(1, core_bits, count, LEVEL_CORE),
        sub(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::{Cap, Kvm};

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }

    /// Sets the model on real vCPUs and reads it back with KVM_GET_CPUID2: the only way to observe
    /// it on a host whose guest CPUID is not virtualised.
    #[test]
    fn model_reads_back_from_kvm() {
        let Ok(kvm) = Kvm::new() else {
            crate::skip(
                "cpuid::model_reads_back_from_kvm",
                "/dev/kvm is not available",
            );
            return;
        };
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        for index in 0..4u8 {
            let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
            let model = vcpu_cpuid(&supported, index, 4, tsc_deadline);
            vcpu.set_cpuid2(&model).unwrap();
            let back = vcpu
                .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .unwrap();

            let f = find(&back, LEAF_FEATURES, 0);
            assert_eq!(f.ebx >> 24, u32::from(index), "initial APIC id");
            assert_eq!((f.ebx >> 16) & 0xff, 4, "addressable logical processors");
            assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
            assert_eq!(
                f.ecx & (ECX_VMX | ECX_MONITOR | ECX_SMX | ECX_EIST | ECX_TM2),
                0
            );
            assert_ne!(f.edx & EDX_HTT, 0);
            assert_eq!(f.ecx & ECX_TSC_DEADLINE != 0, tsc_deadline);

            let smt = find(&back, LEAF_TOPOLOGY, 0);
            let core = find(&back, LEAF_TOPOLOGY, 1);
            let end = find(&back, LEAF_TOPOLOGY, 2);
            assert_eq!(
                (smt.ebx, (smt.ecx >> 8) & 0xff, smt.edx),
                (1, LEVEL_SMT, u32::from(index))
            );
            assert_eq!(
                (core.eax, core.ebx, (core.ecx >> 8) & 0xff),
                (2, 4, LEVEL_CORE)
            );
            assert_eq!((end.ebx, (end.ecx >> 8) & 0xff), (0, 0));

            // Cache topology: four cores in the package; the last level shared by all of them.
            for e in back
                .as_slice()
                .iter()
                .filter(|e| e.function == LEAF_CACHE_PARAMS && e.eax & 0x1f != 0)
            {
                assert_eq!(e.eax >> 26, 3, "cores per package - 1");
                let sharing = (e.eax >> 14) & 0xfff;
                assert_eq!(sharing, if (e.eax >> 5) & 7 >= 3 { 3 } else { 0 });
            }
            if let Some(thermal) = back
                .as_slice()
                .iter()
                .find(|e| e.function == LEAF_THERMAL_POWER)
            {
                assert_eq!(thermal.eax & !EAX_ARAT, 0);
                assert_eq!((thermal.ebx, thermal.ecx, thermal.edx), (0, 0, 0));
            }
            if back.as_slice().iter().any(|e| e.function == LEAF_PMU) {
                let pmu = find(&back, LEAF_PMU, 0);
                assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
            }
        }
    }
}
