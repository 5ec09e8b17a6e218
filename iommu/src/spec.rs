//! Register offsets, bit fields and table layouts of an Intel VT-d remapping unit, as the
//! specification names them (Intel Virtualization Technology for Directed I/O, Architecture
//! Specification, chapters 9 and 11). Everything here is a plain constant or a pure decoder.

/// Register offsets within the unit's 4 KiB MMIO page (section 11.4).
pub mod reg {
    /// Version.
    pub const VER: u64 = 0x00;
    /// Capability.
    pub const CAP: u64 = 0x08;
    /// Extended capability.
    pub const ECAP: u64 = 0x10;
    /// Global command (write-only: reads 0).
    pub const GCMD: u64 = 0x18;
    /// Global status.
    pub const GSTS: u64 = 0x1c;
    /// Root table address.
    pub const RTADDR: u64 = 0x20;
    /// Context command.
    pub const CCMD: u64 = 0x28;
    /// Fault status.
    pub const FSTS: u64 = 0x34;
    /// Fault event control.
    pub const FECTL: u64 = 0x38;
    /// Fault event data.
    pub const FEDATA: u64 = 0x3c;
    /// Fault event address.
    pub const FEADDR: u64 = 0x40;
    /// Fault event upper address.
    pub const FEUADDR: u64 = 0x44;
    /// Invalidation queue head.
    pub const IQH: u64 = 0x80;
    /// Invalidation queue tail.
    pub const IQT: u64 = 0x88;
    /// Invalidation queue address.
    pub const IQA: u64 = 0x90;
    /// Invalidation completion status.
    pub const ICS: u64 = 0x9c;
    /// Invalidation event control.
    pub const IECTL: u64 = 0xa0;
    /// Invalidation event data.
    pub const IEDATA: u64 = 0xa4;
    /// Invalidation event address.
    pub const IEADDR: u64 = 0xa8;
    /// Invalidation event upper address.
    pub const IEUADDR: u64 = 0xac;
    /// Interrupt remapping table address.
    pub const IRTA: u64 = 0xb8;
    /// Where this unit places IVA (ECAP.IRO * 16); the IOTLB register follows at +8.
    pub const IVA: u64 = 0x100;
    /// IOTLB invalidate register.
    pub const IOTLB: u64 = IVA + 8;
    /// Where this unit places the fault recording registers (CAP.FRO * 16), 16 bytes each.
    pub const FRCD: u64 = 0x200;
}

/// Version register: major 1, minor 0.
pub const VERSION: u32 = 0x10;

/// Global command and status bits (section 11.4.4, 11.4.5); each status bit mirrors its command.
pub mod gcmd {
    /// Translation enable (level).
    pub const TE: u32 = 1 << 31;
    /// Set root table pointer (one-shot).
    pub const SRTP: u32 = 1 << 30;
    /// Set fault log (legacy, unsupported: ignored).
    pub const SFL: u32 = 1 << 29;
    /// Enable advanced fault logging (legacy, unsupported: ignored).
    pub const EAFL: u32 = 1 << 28;
    /// Write buffer flush (one-shot; completes at once).
    pub const WBF: u32 = 1 << 27;
    /// Queued invalidation enable (level).
    pub const QIE: u32 = 1 << 26;
    /// Interrupt remapping enable (level).
    pub const IRE: u32 = 1 << 25;
    /// Set interrupt remapping table pointer (one-shot).
    pub const SIRTP: u32 = 1 << 24;
    /// Compatibility format interrupt (level).
    pub const CFI: u32 = 1 << 23;
    /// The level commands, whose status follows the written value.
    pub const LEVEL: u32 = TE | QIE | IRE | CFI;
}

/// Fault status bits (section 11.4.7.1).
pub mod fsts {
    /// Primary fault overflow (RW1C).
    pub const PFO: u32 = 1 << 0;
    /// Primary pending fault (read-only: some fault record has F set).
    pub const PPF: u32 = 1 << 1;
    /// Invalidation queue error (RW1C).
    pub const IQE: u32 = 1 << 4;
    /// Invalidation completion error (RW1C; device-TLB only, never set here).
    pub const ICE: u32 = 1 << 5;
    /// Invalidation time-out error (RW1C; device-TLB only, never set here).
    pub const ITE: u32 = 1 << 6;
    /// Fault record index field position.
    pub const FRI_SHIFT: u32 = 8;
    /// The write-1-to-clear bits.
    pub const RW1C: u32 = PFO | IQE | ICE | ITE;
}

/// Event control registers (FECTL, IECTL): interrupt mask and pending.
pub mod event {
    /// Interrupt mask.
    pub const IM: u32 = 1 << 31;
    /// Interrupt pending (read-only).
    pub const IP: u32 = 1 << 30;
}

/// Context command register fields (section 11.4.6).
pub mod ccmd {
    /// Invalidate context cache (set by software, cleared by hardware on completion).
    pub const ICC: u64 = 1 << 63;
    /// Requested granularity.
    pub const CIRG_SHIFT: u32 = 61;
    /// Actual granularity.
    pub const CAIG_SHIFT: u32 = 59;
    /// Function mask.
    pub const FM_SHIFT: u32 = 32;
    /// Source id.
    pub const SID_SHIFT: u32 = 16;
}

/// IOTLB invalidate register fields (section 11.4.8.1).
pub mod iotlb {
    /// Invalidate IOTLB (set by software, cleared by hardware on completion).
    pub const IVT: u64 = 1 << 63;
    /// Requested granularity.
    pub const IIRG_SHIFT: u32 = 60;
    /// Actual granularity.
    pub const IAIG_SHIFT: u32 = 57;
    /// Domain id.
    pub const DID_SHIFT: u32 = 32;
    /// IVA register: invalidation hint (leaf entries only changed).
    pub const IVA_IH: u64 = 1 << 6;
    /// IVA register: address mask (log2 of the number of pages).
    pub const IVA_AM_MASK: u64 = 0x3f;
}

/// Invalidation granularities as the CCMD and IOTLB registers and descriptors encode them.
pub mod granularity {
    /// Everything.
    pub const GLOBAL: u64 = 1;
    /// One domain.
    pub const DOMAIN: u64 = 2;
    /// One device (context) or pages of one domain (IOTLB).
    pub const DEVICE_OR_PAGE: u64 = 3;
}

/// Invalidation queue registers (section 11.4.9).
pub mod iq {
    /// IQA: descriptor width (256-bit, scalable mode only).
    pub const IQA_DW: u64 = 1 << 11;
    /// IQA: queue size field (2^QS 4 KiB pages).
    pub const IQA_QS_MASK: u64 = 0x7;
    /// IQH/IQT: the descriptor index is bits 18:4.
    pub const INDEX_MASK: u64 = 0x7fff0;
    /// ICS: invalidation wait descriptor complete.
    pub const ICS_IWC: u32 = 1;
}

/// Invalidation descriptor types and fields (section 6.5.2), 128-bit (legacy) descriptors.
pub mod desc {
    /// Context-cache invalidate.
    pub const CONTEXT: u64 = 1;
    /// IOTLB invalidate.
    pub const IOTLB: u64 = 2;
    /// Device-TLB invalidate.
    pub const DEVICE_IOTLB: u64 = 3;
    /// Interrupt entry cache invalidate.
    pub const IEC: u64 = 4;
    /// Invalidation wait.
    pub const WAIT: u64 = 5;
    /// Bits 3:0 and 11:9 hold the type.
    pub const TYPE_LOW_MASK: u64 = 0xf;
    /// The high type bits (11:9), zero for every legacy type.
    pub const TYPE_HIGH_MASK: u64 = 0xe00;
    /// Granularity field (bits 5:4) of context and IOTLB descriptors.
    pub const GRANULARITY_SHIFT: u32 = 4;
    /// Interrupt entry cache descriptor: index-selective (else global).
    pub const IEC_INDEX_SELECTIVE: u64 = 1 << 4;
    /// Wait descriptor: interrupt flag.
    pub const WAIT_IF: u64 = 1 << 4;
    /// Wait descriptor: status write.
    pub const WAIT_SW: u64 = 1 << 5;
    /// Wait descriptor: fence.
    pub const WAIT_FN: u64 = 1 << 6;
    /// Wait descriptor: page-request drain (needs page requests: unsupported).
    pub const WAIT_PD: u64 = 1 << 7;
}

/// Legacy-mode translation fault reasons (section 7.1.3, table "Non-recoverable fault reason
/// encodings"); Linux's `dma_remap_fault_reasons` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultReason {
    /// The present bit of the root entry is clear.
    RootNotPresent = 0x1,
    /// The present bit of the context entry is clear.
    ContextNotPresent = 0x2,
    /// The context entry is programmed with an invalid or unsupported value (TT, AW).
    ContextInvalid = 0x3,
    /// The input address is above the address width of the context.
    AddressBeyondWidth = 0x4,
    /// A write found a paging entry without write permission.
    WriteNotAllowed = 0x5,
    /// A read found a paging entry without read permission.
    ReadNotAllowed = 0x6,
    /// A second-level paging entry could not be read (not in memory).
    PagingEntryInaccessible = 0x7,
    /// The root table could not be read (RTADDR not in memory).
    RootTableInaccessible = 0x8,
    /// The context table could not be read (its pointer not in memory).
    ContextTableInaccessible = 0x9,
    /// A present root entry has a reserved bit set.
    RootReserved = 0xa,
    /// A present context entry has a reserved bit set.
    ContextReserved = 0xb,
    /// A present second-level paging entry has a reserved bit set.
    PagingEntryReserved = 0xc,
    /// A remappable-format interrupt request has a reserved field set.
    InterruptRequestReserved = 0x20,
    /// The interrupt index is beyond the interrupt remapping table's size.
    InterruptIndexBeyondTable = 0x21,
    /// The interrupt remapping table entry is not present.
    InterruptEntryNotPresent = 0x22,
    /// The interrupt remapping table entry could not be read (not in memory).
    InterruptTableInaccessible = 0x23,
    /// A present interrupt remapping table entry has a reserved field set.
    InterruptEntryReserved = 0x24,
    /// A compatibility-format interrupt request was blocked (CFI clear, or extended interrupt
    /// mode).
    CompatibilityBlocked = 0x25,
    /// The requester's source-id failed the entry's verification.
    InterruptSourceBlocked = 0x26,
}

impl FaultReason {
    /// Whether the context entry's fault processing disable (FPD) bit suppresses recording of this
    /// fault: faults found at the context entry (whose FPD hardware reads even when P is clear)
    /// or below it, and interrupt-remapping faults found at a table entry (not present, reserved
    /// bits, source-id check), whose FPD bit counts. Faults at the root entry, reserved bits in the
    /// context entry, and faults in decoding an interrupt request or reaching its entry are always
    /// recorded.
    pub fn qualified(self) -> bool {
        matches!(
            self,
            FaultReason::InterruptEntryNotPresent
                | FaultReason::InterruptEntryReserved
                | FaultReason::InterruptSourceBlocked
                | FaultReason::ContextNotPresent
                | FaultReason::ContextInvalid
                | FaultReason::AddressBeyondWidth
                | FaultReason::WriteNotAllowed
                | FaultReason::ReadNotAllowed
                | FaultReason::PagingEntryInaccessible
                | FaultReason::PagingEntryReserved
        )
    }
}

/// Root entry, legacy mode (section 9.1): present bit and context-table pointer; everything else
/// reserved.
pub mod root {
    /// Present.
    pub const P: u64 = 1;
    /// Context-table pointer.
    pub const CTP_MASK: u64 = !0xfff;
    /// Reserved bits of the low quadword (the high quadword is reserved entirely).
    pub const LOW_RESERVED: u64 = 0xffe;
}

/// Context entry, legacy mode (section 9.3).
pub mod context {
    /// Present.
    pub const P: u64 = 1;
    /// Fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// Translation type.
    pub const TT_SHIFT: u32 = 2;
    /// TT: untranslated requests walk the second-level tables.
    pub const TT_MULTI_LEVEL: u64 = 0;
    /// TT: as multi-level, plus device-TLB translation requests (needs ECAP.DT).
    pub const TT_DEVICE_TLB: u64 = 1;
    /// TT: pass-through (needs ECAP.PT).
    pub const TT_PASS_THROUGH: u64 = 2;
    /// Second-level page-table pointer.
    pub const SLPTPTR_MASK: u64 = !0xfff;
    /// Reserved bits of the low quadword (11:4).
    pub const LOW_RESERVED: u64 = 0xff0;
    /// Address width (high quadword bits 2:0).
    pub const AW_MASK: u64 = 0x7;
    /// Domain id (high quadword bits 23:8).
    pub const DID_SHIFT: u32 = 8;
    /// Reserved bits of the high quadword: 7 and 63:24 (6:3 are available to software).
    pub const HIGH_RESERVED: u64 = !0xff_ffff | 0x80;
}

/// Second-level paging entries (section 9.8).
pub mod slpte {
    /// Read.
    pub const R: u64 = 1;
    /// Write.
    pub const W: u64 = 1 << 1;
    /// Page size: this entry maps a 2 MiB or 1 GiB page.
    pub const PS: u64 = 1 << 7;
    /// The address field (bits 51:12; bits above the host address width are reserved).
    pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// Interrupt remapping table entries, remapped format (section 9.10): 128 bits.
pub mod irte {
    /// Present.
    pub const P: u64 = 1;
    /// Fault processing disable (read even when P is clear).
    pub const FPD: u64 = 1 << 1;
    /// Destination mode: logical.
    pub const DM: u64 = 1 << 2;
    /// Redirection hint.
    pub const RH: u64 = 1 << 3;
    /// Trigger mode: level.
    pub const TM: u64 = 1 << 4;
    /// Delivery mode (bits 7:5).
    pub const DLM_SHIFT: u32 = 5;
    /// Reserved delivery modes: 011b, and 110b (which the local APIC would take as a start-up).
    pub const DLM_RESERVED: [u64; 2] = [0b011, 0b110];
    /// Vector (bits 23:16).
    pub const VECTOR_SHIFT: u32 = 16;
    /// Destination id (bits 63:32): the whole field in extended interrupt mode (x2APIC), bits
    /// 47:40 otherwise.
    pub const DEST_SHIFT: u32 = 32;
    /// Reserved in the low quadword: 14:12, the posted mode bit 15 (no posted interrupts here)
    /// and 31:24.
    pub const LOW_RESERVED: u64 = 0xff00_f000;
    /// Reserved destination bits outside extended interrupt mode: 63:48 and 39:32.
    pub const XAPIC_DEST_RESERVED: u64 = 0xffff_00ff_0000_0000;
    /// Source-id qualifier (high quadword bits 17:16).
    pub const SQ_SHIFT: u32 = 16;
    /// Source validation type (high quadword bits 19:18).
    pub const SVT_SHIFT: u32 = 18;
    /// SVT: verify the requester against SID and SQ.
    pub const SVT_SID: u64 = 1;
    /// SVT: the requester's bus must lie between SID's bytes (start 15:8, end 7:0).
    pub const SVT_BUS: u64 = 2;
    /// SVT: reserved.
    pub const SVT_RESERVED: u64 = 3;
    /// The requester-id bits an SQ value (0 to 3) leaves out of the comparison: none, bit 2,
    /// bits 2:1, bits 2:0.
    pub fn sq_ignored(sq: u64) -> u16 {
        0b111 & !((1u16 << (3 - (sq & 3))) - 1)
    }
    /// Reserved in the high quadword: 63:20.
    pub const HIGH_RESERVED: u64 = !0xf_ffff;
}

/// Interrupt requests (MSI address and data, section 5.1.2): the remappable format and the
/// compatibility-format fields a remapped interrupt is delivered with.
pub mod msi {
    /// Address bit 4: interrupt format is remappable.
    pub const REMAPPABLE: u64 = 1 << 4;
    /// Address bit 3: subhandle valid (the data's low 16 bits are added to the handle).
    pub const SHV: u64 = 1 << 3;
    /// Address bits 19:5 hold handle bits 14:0.
    pub const HANDLE_SHIFT: u32 = 5;
    /// Handle bits 14:0 once shifted down.
    pub const HANDLE_LOW_MASK: u64 = 0x7fff;
    /// Address bit 2 holds handle bit 15.
    pub const HANDLE_15_BIT: u32 = 2;
    /// The data's subhandle (bits 15:0); bits 31:16 are reserved when SHV is set.
    pub const SUBHANDLE_MASK: u32 = 0xffff;
    /// The address of a remappable-format request for `handle`, with SHV when `shv`.
    pub fn remappable_address(handle: u16, shv: bool) -> u64 {
        let h = u64::from(handle);
        0xfee0_0000
            | ((h & HANDLE_LOW_MASK) << HANDLE_SHIFT)
            | ((h >> 15) << HANDLE_15_BIT)
            | REMAPPABLE
            | if shv { SHV } else { 0 }
    }

    /// Compatibility format: redirection hint (address bit 3).
    pub const REDIRECTION_HINT: u64 = 1 << 3;
    /// Compatibility format: logical destination mode (address bit 2).
    pub const LOGICAL: u64 = 1 << 2;
    /// Compatibility format data: level asserted (bit 14).
    pub const DATA_ASSERT: u32 = 1 << 14;
    /// Compatibility format data: level-triggered (bit 15).
    pub const DATA_LEVEL: u32 = 1 << 15;
}

/// Interrupt remapping table address register (section 11.4.10).
pub mod irta {
    /// Extended interrupt mode enable: x2APIC destinations (needs ECAP.EIM).
    pub const EIME: u64 = 1 << 11;
    /// Table size field: 2^(S + 1) entries.
    pub const S_MASK: u64 = 0xf;
}

/// The interrupt address range: requests without PASID here are interrupt messages.
pub const INTERRUPT_RANGE: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;
