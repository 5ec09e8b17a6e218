//! Legacy-mode translation (section 3.4): the root table indexed by bus, the context table by
//! device and function, then the second-level page tables. Every failure is a [`FaultReason`].
//! Guest memory is read one quadword at a time and never trusted: a pointer outside guest RAM is a
//! fault, not an access.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::Memory;
use crate::config::Config;
use crate::spec::{FaultReason, context, root, slpte};

/// What a present, valid context entry says about a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Context {
    /// Domain id.
    pub did: u16,
    /// How the device's requests are translated.
    pub kind: ContextKind,
    /// Fault processing disable: qualified faults are not recorded.
    pub fpd: bool,
}

/// The translation type of a context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextKind {
    /// Walk second-level tables of `levels` levels rooted at `table`.
    Translated {
        /// Second-level page-table pointer.
        table: u64,
        /// 3 or 4.
        levels: u8,
    },
    /// Output address = input address.
    PassThrough,
}

/// A second-level leaf: `1 << shift` bytes at `iova_base` map to `gpa_base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Leaf {
    pub iova_base: u64,
    pub gpa_base: u64,
    /// 12, 21 or 30.
    pub shift: u32,
    /// Read allowed at every level.
    pub read: bool,
    /// Write allowed at every level.
    pub write: bool,
}

impl Leaf {
    /// Whether the leaf allows the access.
    pub fn allows(&self, access: Access) -> bool {
        (!access.read || self.read) && (!access.write || self.write)
    }
}

/// The kind of a DMA request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The request reads memory.
    pub read: bool,
    /// The request writes memory.
    pub write: bool,
}

impl Access {
    /// A read.
    pub const READ: Access = Access {
        read: true,
        write: false,
    };
    /// A write.
    pub const WRITE: Access = Access {
        read: false,
        write: true,
    };

    /// The fault a missing permission gives: a write fault takes precedence, as a request that
    /// writes is reported as a write.
    pub fn denied(self) -> FaultReason {
        if self.write {
            FaultReason::WriteNotAllowed
        } else {
            FaultReason::ReadNotAllowed
        }
    }
}

/// One table entry. Read through its region: the memory-wide accessors go through vm-memory's
/// IOVA-aware slice iteration, several times the cost for a single quadword.
pub(crate) fn read_u64(mem: &Memory, addr: u64) -> Option<u64> {
    let region = mem.find_region(GuestAddress(addr))?;
    let offset = region.to_region_addr(GuestAddress(addr))?;
    region.read_obj::<u64>(offset).ok()
}

/// Writes a 32-bit status word (invalidation wait), through its region as [`read_u64`] reads.
pub(crate) fn write_u32(mem: &Memory, addr: u64, value: u32) -> Option<()> {
    let region = mem.find_region(GuestAddress(addr))?;
    let offset = region.to_region_addr(GuestAddress(addr))?;
    region.write_obj(value, offset).ok()
}

/// Address bits above the host address width are reserved in every pointer.
fn above_width(addr: u64, width: u8) -> bool {
    addr.checked_shr(u32::from(width)).unwrap_or(0) != 0
}

/// A translation failure: the reason, and whether recording it is suppressed (the context entry's
/// FPD, which hardware evaluates whether or not the entry is present).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub reason: FaultReason,
    pub fpd: bool,
}

impl From<FaultReason> for Failure {
    fn from(reason: FaultReason) -> Self {
        Failure { reason, fpd: false }
    }
}

/// How a walk ended: at a leaf, at an entry that is not present, or at an entry whose rights
/// deny the request. The leaf returned says what the request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    Complete,
    NotPresent,
    Denied,
}

/// Reads and checks the root and context entries of `sid` under the root table at `root_table`.
pub(crate) fn lookup_context(
    mem: &Memory,
    cfg: &Config,
    root_table: u64,
    sid: u16,
) -> Result<Context, Failure> {
    let bus = u64::from(sid >> 8);
    let devfn = u64::from(sid & 0xff);
    let root_entry = (root_table & !0xfff).wrapping_add(bus * 16);
    let (Some(rlo), Some(rhi)) = (
        read_u64(mem, root_entry),
        read_u64(mem, root_entry.wrapping_add(8)),
    ) else {
        return Err(FaultReason::RootTableInaccessible.into());
    };
    if rlo & root::P == 0 {
        return Err(FaultReason::RootNotPresent.into());
    }
    let ctp = rlo & root::CTP_MASK;
    if rlo & root::LOW_RESERVED != 0 || rhi != 0 || above_width(ctp, cfg.aw_bits) {
        return Err(FaultReason::RootReserved.into());
    }

    let entry = ctp + devfn * 16;
    let (Some(clo), Some(chi)) = (read_u64(mem, entry), read_u64(mem, entry + 8)) else {
        return Err(FaultReason::ContextTableInaccessible.into());
    };
    let fpd = clo & context::FPD != 0;
    if clo & context::P == 0 {
        return Err(Failure {
            reason: FaultReason::ContextNotPresent,
            fpd,
        });
    }
    let table = clo & context::SLPTPTR_MASK;
    let did = (chi >> context::DID_SHIFT) & 0xffff;
    if clo & context::LOW_RESERVED != 0
        || chi & context::HIGH_RESERVED != 0
        || above_width(did, cfg.domain_id_bits() as u8)
        || above_width(table, cfg.aw_bits)
    {
        return Err(FaultReason::ContextReserved.into());
    }
    let invalid = Failure {
        reason: FaultReason::ContextInvalid,
        fpd,
    };
    let kind = match (clo >> context::TT_SHIFT) & 3 {
        context::TT_MULTI_LEVEL => {
            let aw = chi & context::AW_MASK;
            if aw > 4 || cfg.sagaw() & (1 << aw) == 0 {
                return Err(invalid);
            }
            ContextKind::Translated {
                table,
                levels: aw as u8 + 2,
            }
        }
        context::TT_PASS_THROUGH if cfg.pass_through => ContextKind::PassThrough,
        // Device-TLB translation needs ECAP.DT, which this unit does not offer; 3 is reserved.
        _ => return Err(invalid),
    };
    Ok(Context {
        did: did as u16,
        kind,
        fpd,
    })
}

/// Walks the second-level tables for `iova`, checking `access` at every level. Stops at the first
/// entry that is not present or that denies the access, returning a 4 KiB leaf with what the
/// request may do there (nothing, or less than it asks); errors are the structural faults.
pub(crate) fn walk(
    mem: &Memory,
    cfg: &Config,
    table: u64,
    levels: u8,
    iova: u64,
    access: Access,
) -> Result<(Leaf, WalkEnd), FaultReason> {
    let page = |read, write| Leaf {
        iova_base: iova & !0xfff,
        gpa_base: 0,
        shift: 12,
        read,
        write,
    };
    let width = (12 + 9 * u32::from(levels)).min(u32::from(cfg.aw_bits));
    if iova.checked_shr(width).unwrap_or(0) != 0 {
        return Err(FaultReason::AddressBeyondWidth);
    }
    let mut table = table;
    let (mut read, mut write) = (true, true);
    for level in (1..=u32::from(levels)).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (iova >> shift) & 0x1ff;
        let entry = read_u64(mem, table + index * 8).ok_or(FaultReason::PagingEntryInaccessible)?;
        let (r, w) = (entry & slpte::R != 0, entry & slpte::W != 0);
        if !r && !w {
            return Ok((page(false, false), WalkEnd::NotPresent));
        }
        let addr = entry & slpte::ADDR_MASK;
        let leaf = level == 1 || entry & slpte::PS != 0;
        let superpage_ok = match level {
            2 => cfg.superpages_2m,
            3 => cfg.superpages_1g,
            _ => false,
        };
        let page_mask = (1u64 << shift) - 1;
        if above_width(addr, cfg.aw_bits)
            || (level > 1 && leaf && (!superpage_ok || addr & page_mask != 0))
        {
            return Err(FaultReason::PagingEntryReserved);
        }
        read &= r;
        write &= w;
        if (access.read && !read) || (access.write && !write) {
            return Ok((page(read, write), WalkEnd::Denied));
        }
        if leaf {
            let leaf = Leaf {
                iova_base: iova & !page_mask,
                gpa_base: addr,
                shift,
                read,
                write,
            };
            return Ok((leaf, WalkEnd::Complete));
        }
        table = addr;
    }
    // levels == 0 cannot come from a context entry (AW gives 2 or more).
    Err(FaultReason::ContextInvalid)
}
