//! What the unit offers, and the CAP/ECAP registers that say so (section 11.4.2, 11.4.3).

use crate::spec::reg;

/// The configuration of one remapping unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Guest address width: 39 (3-level tables) or 48 (3- and 4-level tables).
    pub aw_bits: u8,
    /// CAP.CM: the guest must invalidate after every change, also not-present to present.
    pub caching_mode: bool,
    /// CAP.PSI: page-selective IOTLB invalidation, with CAP.MAMV = `max_address_mask`.
    pub page_selective: bool,
    /// The largest address mask (log2 pages) a page-selective invalidation may use.
    pub max_address_mask: u8,
    /// CAP.SLLPS bit 0: 2 MiB second-level pages.
    pub superpages_2m: bool,
    /// CAP.SLLPS bit 1: 1 GiB second-level pages.
    pub superpages_1g: bool,
    /// ECAP.QI: queued invalidation (otherwise register-based only).
    pub queued_invalidation: bool,
    /// ECAP.PT: pass-through contexts.
    pub pass_through: bool,
    /// ECAP.IR: interrupt remapping (needs queued invalidation).
    pub interrupt_remapping: bool,
    /// ECAP.EIM: extended interrupt mode, 32-bit x2APIC destinations (needs interrupt remapping).
    pub extended_interrupt_mode: bool,
    /// ECAP.C: page walks snoop the CPU caches (the guest needs no cache flushes).
    pub coherent: bool,
    /// Number of fault recording registers (CAP.NFR + 1), 1 to 128.
    pub fault_records: u16,
    /// CAP.ND: domain-id bits, 4 + 2 * nd (6 gives 16-bit domain ids).
    pub domain_id_field: u8,
    /// Entries the IOTLB holds before it evicts.
    pub iotlb_capacity: usize,
    /// Entries the context cache holds before it evicts.
    pub context_cache_capacity: usize,
}

impl Default for Config {
    /// Settings that suit Linux's intel_iommu driver: 48-bit, no caching mode, PSI with a 512-page
    /// mask, 2 MiB and 1 GiB pages, queued invalidation, pass-through, interrupt remapping with
    /// x2APIC destinations, coherent walks, 8 fault records, 16-bit domain ids.
    fn default() -> Self {
        Self {
            aw_bits: 48,
            caching_mode: false,
            page_selective: true,
            max_address_mask: 9,
            superpages_2m: true,
            superpages_1g: true,
            queued_invalidation: true,
            pass_through: true,
            interrupt_remapping: true,
            extended_interrupt_mode: true,
            coherent: true,
            fault_records: 8,
            domain_id_field: 6,
            iotlb_capacity: 4096,
            context_cache_capacity: 512,
        }
    }
}

/// Why a configuration cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Unsupported address width.
    #[error("address width {0} is not supported (39 or 48)")]
    AddressWidth(u8),
    /// Bad fault record count.
    #[error("{0} fault records: between 1 and 128")]
    FaultRecords(u16),
    /// Bad domain-id field.
    #[error("ND {0}: between 0 and 6")]
    DomainIds(u8),
    /// Bad address mask.
    #[error("maximum address mask {0}: at most 63")]
    AddressMask(u8),
    /// Interrupt remapping without queued invalidation (the only way to invalidate its cache).
    #[error("interrupt remapping needs queued invalidation")]
    RemappingWithoutQueue,
    /// Extended interrupt mode without interrupt remapping.
    #[error("x2APIC destinations (eim) need interrupt remapping")]
    EimWithoutRemapping,
}

/// CAP bit positions.
mod cap {
    pub const ND_SHIFT: u32 = 0;
    pub const CM: u64 = 1 << 7;
    pub const SAGAW_SHIFT: u32 = 8;
    pub const MGAW_SHIFT: u32 = 16;
    pub const ZLR: u64 = 1 << 22;
    pub const FRO_SHIFT: u32 = 24;
    pub const SLLPS_SHIFT: u32 = 34;
    pub const PSI: u64 = 1 << 39;
    pub const NFR_SHIFT: u32 = 40;
    pub const MAMV_SHIFT: u32 = 48;
    pub const DWD: u64 = 1 << 54;
    pub const DRD: u64 = 1 << 55;
}

/// ECAP bit positions.
mod ecap {
    pub const C: u64 = 1 << 0;
    pub const QI: u64 = 1 << 1;
    pub const IR: u64 = 1 << 3;
    pub const EIM: u64 = 1 << 4;
    pub const PT: u64 = 1 << 6;
    pub const IRO_SHIFT: u32 = 8;
    pub const MHMV_SHIFT: u32 = 20;
}

/// SAGAW bits: 1 = 39-bit (3-level), 2 = 48-bit (4-level).
const SAGAW_39: u64 = 1 << 1;
const SAGAW_48: u64 = 1 << 2;

impl Config {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.aw_bits, 39 | 48) {
            return Err(ConfigError::AddressWidth(self.aw_bits));
        }
        if !(1..=128).contains(&self.fault_records) {
            return Err(ConfigError::FaultRecords(self.fault_records));
        }
        if self.domain_id_field > 6 {
            return Err(ConfigError::DomainIds(self.domain_id_field));
        }
        if self.max_address_mask > 63 {
            return Err(ConfigError::AddressMask(self.max_address_mask));
        }
        if self.interrupt_remapping && !self.queued_invalidation {
            return Err(ConfigError::RemappingWithoutQueue);
        }
        if self.extended_interrupt_mode && !self.interrupt_remapping {
            return Err(ConfigError::EimWithoutRemapping);
        }
        Ok(())
    }

    /// The SAGAW field: which table depths the unit walks.
    pub fn sagaw(&self) -> u64 {
        if self.aw_bits == 48 {
            SAGAW_39 | SAGAW_48
        } else {
            SAGAW_39
        }
    }

    /// The capability register.
    pub fn cap(&self) -> u64 {
        let sllps = u64::from(self.superpages_2m) | (u64::from(self.superpages_1g) << 1);
        let mut cap = (u64::from(self.domain_id_field) << cap::ND_SHIFT)
            | (self.sagaw() << cap::SAGAW_SHIFT)
            | (u64::from(self.aw_bits - 1) << cap::MGAW_SHIFT)
            | cap::ZLR
            | ((reg::FRCD / 16) << cap::FRO_SHIFT)
            | (sllps << cap::SLLPS_SHIFT)
            | (u64::from(self.fault_records - 1) << cap::NFR_SHIFT)
            | cap::DWD
            | cap::DRD;
        if self.caching_mode {
            cap |= cap::CM;
        }
        if self.page_selective {
            cap |= cap::PSI | (u64::from(self.max_address_mask) << cap::MAMV_SHIFT);
        }
        cap
    }

    /// The extended capability register.
    pub fn ecap(&self) -> u64 {
        let mut ecap = ((reg::IVA / 16) << ecap::IRO_SHIFT) | (0xf << ecap::MHMV_SHIFT);
        if self.coherent {
            ecap |= ecap::C;
        }
        if self.queued_invalidation {
            ecap |= ecap::QI;
        }
        if self.pass_through {
            ecap |= ecap::PT;
        }
        if self.interrupt_remapping {
            ecap |= ecap::IR;
        }
        if self.extended_interrupt_mode {
            ecap |= ecap::EIM;
        }
        ecap
    }

    /// Domain ids the unit supports.
    pub fn domain_id_bits(&self) -> u32 {
        4 + 2 * u32::from(self.domain_id_field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_decode_as_linux_reads_them() {
        let c = Config::default();
        c.validate().unwrap();
        let cap = c.cap();
        assert_eq!(cap & 7, 6, "ND");
        assert_eq!((cap >> 8) & 0x1f, 0b110, "SAGAW 39 and 48");
        assert_eq!((cap >> 16) & 0x3f, 47, "MGAW");
        assert_eq!(((cap >> 24) & 0x3ff) * 16, reg::FRCD, "FRO");
        assert_eq!((cap >> 34) & 0xf, 0b11, "SLLPS 2M and 1G");
        assert_ne!(cap & (1 << 39), 0, "PSI");
        assert_eq!((cap >> 40) & 0xff, 7, "NFR = 8 records");
        assert_eq!((cap >> 48) & 0x3f, 9, "MAMV");
        assert_eq!(cap & (1 << 7), 0, "no caching mode");
        let ecap = c.ecap();
        assert_eq!(ecap & 0b11, 0b11, "C and QI");
        assert_ne!(ecap & (1 << 6), 0, "PT");
        assert_eq!(((ecap >> 8) & 0x3ff) * 16, reg::IVA, "IRO");
        assert_eq!((ecap >> 3) & 3, 0b11, "IR and EIM");
        for bit in [2, 43] {
            assert_eq!(ecap & (1 << bit), 0, "DT, SMTS stay off (bit {bit})");
        }
        assert_eq!(cap & (1 << 59), 0, "no posted interrupts");
        // The registers' fault records fit the page.
        const { assert!(reg::FRCD + 16 * 128 <= 0x1000) };
    }

    #[test]
    fn options_change_the_registers() {
        let c = Config {
            aw_bits: 39,
            caching_mode: true,
            page_selective: false,
            superpages_1g: false,
            queued_invalidation: false,
            pass_through: false,
            interrupt_remapping: false,
            extended_interrupt_mode: false,
            ..Config::default()
        };
        let cap = c.cap();
        assert_eq!((cap >> 8) & 0x1f, 0b10);
        assert_eq!((cap >> 16) & 0x3f, 38);
        assert_ne!(cap & (1 << 7), 0);
        assert_eq!(cap & (1 << 39), 0);
        assert_eq!((cap >> 34) & 0xf, 0b01);
        assert_eq!(c.ecap() & 0b1_1110, 0, "no QI, IR, EIM");
        assert_eq!(
            Config {
                aw_bits: 57,
                ..Config::default()
            }
            .validate(),
            Err(ConfigError::AddressWidth(57))
        );
        assert_eq!(
            Config {
                fault_records: 0,
                ..Config::default()
            }
            .validate(),
            Err(ConfigError::FaultRecords(0))
        );
        let no_qi = Config {
            queued_invalidation: false,
            ..Config::default()
        };
        assert_eq!(no_qi.validate(), Err(ConfigError::RemappingWithoutQueue));
        let eim_alone = Config {
            interrupt_remapping: false,
            ..Config::default()
        };
        assert_eq!(eim_alone.validate(), Err(ConfigError::EimWithoutRemapping));
        let xapic_only = Config {
            extended_interrupt_mode: false,
            ..Config::default()
        };
        xapic_only.validate().unwrap();
        assert_eq!((xapic_only.ecap() >> 3) & 3, 0b01, "IR without EIM");
    }
}
