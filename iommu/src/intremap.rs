//! Interrupt remapping (chapter 5, section 9.10): the interrupt remapping table (IRT) in guest
//! memory, the remappable MSI format, source-id verification and the interrupt-remapping faults.
//!
//! The unit keeps no interrupt entry cache of its own. The VMM caches what [`RemappingUnit::
//! remap_interrupt`] returns (as KVM routes), and the unit tells it through an
//! [`InterruptCacheListener`] which of those translations an invalidation, a new table or a change
//! of IRE or CFI ends. The listener runs before the invalidating command completes, so once the
//! guest sees an IEC invalidation done, no interrupt is delivered through a stale entry.

use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLockReadGuard};

use crate::spec::{FaultReason, INTERRUPT_RANGE, irte, msi};
use crate::translate::read_u64;
use crate::unit::{Inner, MsiMessage, RemappingUnit};

/// Where an interrupt request comes from: the source-id is checked against the entry for devices,
/// never for the I/O APIC (it has no requester id of its own on this platform; its id only goes in
/// fault records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptSource {
    /// A PCI function's MSI or MSI-X (bus << 8 | device << 3 | function).
    Device(u16),
    /// An I/O APIC pin; the id is what the DMAR table's I/O APIC scope names.
    Ioapic(u16),
}

impl InterruptSource {
    fn sid(self) -> u16 {
        match self {
            InterruptSource::Device(sid) | InterruptSource::Ioapic(sid) => sid,
        }
    }
}

/// An interrupt request the unit blocked: what goes in its fault record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptFault {
    /// Why.
    pub reason: FaultReason,
    /// The interrupt index the request decoded to (0 for a compatibility-format request).
    pub index: u16,
    /// The requester.
    pub source: InterruptSource,
    /// The entry's fault processing disable bit: qualified faults are not recorded.
    pub fpd: bool,
}

/// Which cached interrupt translations an event ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCacheScope {
    /// All of them, compatibility-format ones included (a global IEC invalidation, a new table,
    /// IRE or CFI switched).
    All,
    /// Those of remappable-format requests whose interrupt index is in `first..=last`.
    Entries {
        /// First index.
        first: u16,
        /// Last index.
        last: u16,
    },
}

impl InterruptCacheScope {
    /// A scope covering both (the entries between the two ranges included).
    pub(crate) fn union(self, other: InterruptCacheScope) -> InterruptCacheScope {
        use InterruptCacheScope::{All, Entries};
        match (self, other) {
            (Entries { first: a, last: b }, Entries { first: c, last: d }) => Entries {
                first: a.min(c),
                last: b.max(d),
            },
            _ => All,
        }
    }

    /// Whether a translation of `msg` is within the scope.
    pub fn covers(&self, msg: MsiMessage) -> bool {
        match *self {
            InterruptCacheScope::All => true,
            InterruptCacheScope::Entries { first, last } => interrupt_index(msg)
                .is_some_and(|i| (u32::from(first)..=u32::from(last)).contains(&i)),
        }
    }
}

/// Told when translations that [`RemappingUnit::remap_interrupt`] gave are no longer valid. It is
/// called with the unit's register lock held, before the command or descriptor that caused it
/// completes: it may call `remap_interrupt`, but nothing that reads or writes the unit's registers
/// or records faults.
pub trait InterruptCacheListener: Send + Sync {
    /// Translations within `scope` must be asked for again.
    fn invalidate(&self, scope: InterruptCacheScope);
}

/// The remappable-format interrupt index of `msg`: the handle, plus the subhandle from the data
/// when SHV is set. None for a compatibility-format message or one outside the interrupt range.
pub fn interrupt_index(msg: MsiMessage) -> Option<u32> {
    if !INTERRUPT_RANGE.contains(&msg.address) || msg.address & msi::REMAPPABLE == 0 {
        return None;
    }
    let handle = ((msg.address >> msi::HANDLE_SHIFT) & msi::HANDLE_LOW_MASK)
        | (((msg.address >> msi::HANDLE_15_BIT) & 1) << 15);
    let sub = if msg.address & msi::SHV != 0 {
        msg.data & msi::SUBHANDLE_MASK
    } else {
        0
    };
    Some(handle as u32 + sub)
}

/// The interrupt-remapping state latched from the registers: IRE, CFI and the table of the last
/// SIRTP. Read by translations without the register lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IrState {
    /// GSTS.IRES.
    pub enabled: bool,
    /// GSTS.CFIS.
    pub compatibility: bool,
    /// The table's guest-physical address.
    pub table: u64,
    /// Entries in the table: 2^(S + 1).
    pub entries: u32,
    /// Extended interrupt mode: 32-bit x2APIC destinations.
    pub eime: bool,
}

impl IrState {
    /// Compatibility-format requests pass only with CFI set and outside extended interrupt mode.
    fn compatibility_passes(&self) -> bool {
        self.compatibility && !self.eime
    }
}

/// The 128-bit remapped-format entry at `index`.
struct Irte {
    lo: u64,
    hi: u64,
}

impl Irte {
    fn present(&self) -> bool {
        self.lo & irte::P != 0
    }

    fn fpd(&self) -> bool {
        self.lo & irte::FPD != 0
    }

    /// Reserved bits, the posted-interrupt mode bit (no CAP.PI), reserved delivery modes (011b,
    /// 110b) and the reserved SVT value.
    fn reserved(&self, eime: bool) -> bool {
        let lo_reserved = irte::LOW_RESERVED | if eime { 0 } else { irte::XAPIC_DEST_RESERVED };
        self.lo & lo_reserved != 0
            || self.hi & irte::HIGH_RESERVED != 0
            || (self.hi >> irte::SVT_SHIFT) & 3 == irte::SVT_RESERVED
            || irte::DLM_RESERVED.contains(&((self.lo >> irte::DLM_SHIFT) & 7))
    }

    /// Whether `sid` may use this entry (SVT and SQ).
    fn source_allowed(&self, sid: u16) -> bool {
        let entry_sid = (self.hi & 0xffff) as u16;
        match (self.hi >> irte::SVT_SHIFT) & 3 {
            irte::SVT_SID => {
                let ignore = irte::sq_ignored(self.hi >> irte::SQ_SHIFT);
                (sid ^ entry_sid) & !ignore == 0
            }
            irte::SVT_BUS => {
                let bus = sid >> 8;
                (entry_sid >> 8..=entry_sid & 0xff).contains(&bus)
            }
            _ => true,
        }
    }

    /// The interrupt the entry describes, as a compatibility-format message. A destination above
    /// 255 (extended interrupt mode only) goes in address bits 63:40, the form of KVM's
    /// X2APIC API: bits 31:8 of the upper address dword hold destination bits 31:8.
    fn message(&self, eime: bool) -> MsiMessage {
        let dest = (self.lo >> irte::DEST_SHIFT) as u32;
        let dest = if eime { dest } else { (dest >> 8) & 0xff };
        let mut address = 0xfee0_0000 | (u64::from(dest & 0xff) << 12);
        address |= u64::from(dest & !0xff) << 32;
        if self.lo & irte::RH != 0 {
            address |= msi::REDIRECTION_HINT;
        }
        if self.lo & irte::DM != 0 {
            address |= msi::LOGICAL;
        }
        let vector = ((self.lo >> irte::VECTOR_SHIFT) & 0xff) as u32;
        let delivery = ((self.lo >> irte::DLM_SHIFT) & 7) as u32;
        let mut data = vector | (delivery << 8);
        if self.lo & irte::TM != 0 {
            data |= msi::DATA_LEVEL | msi::DATA_ASSERT;
        }
        MsiMessage { address, data }
    }
}

impl Inner {
    pub(crate) fn ir_state(&self) -> RwLockReadGuard<'_, IrState> {
        self.ir.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the listener, if any, that translations in `scope` are stale.
    pub(crate) fn interrupt_cache_invalidated(&self, scope: InterruptCacheScope) {
        if let Some(listener) = self.ir_listener.get().and_then(std::sync::Weak::upgrade) {
            listener.invalidate(scope);
        }
    }

    fn remap(
        &self,
        source: InterruptSource,
        msg: MsiMessage,
    ) -> Result<MsiMessage, InterruptFault> {
        let state = *self.ir_state();
        if !state.enabled || !INTERRUPT_RANGE.contains(&msg.address) {
            return Ok(msg);
        }
        let fault = |reason, index, fpd| InterruptFault {
            reason,
            index,
            source,
            fpd,
        };
        let Some(index) = interrupt_index(msg) else {
            return if state.compatibility_passes() {
                Ok(msg)
            } else {
                Err(fault(FaultReason::CompatibilityBlocked, 0, false))
            };
        };
        // The fault records' index field holds 16 bits; an index past that is past any table.
        let recorded = index as u16;
        if msg.address & msi::SHV != 0 && msg.data & !msi::SUBHANDLE_MASK != 0 {
            return Err(fault(
                FaultReason::InterruptRequestReserved,
                recorded,
                false,
            ));
        }
        if index >= state.entries {
            return Err(fault(
                FaultReason::InterruptIndexBeyondTable,
                recorded,
                false,
            ));
        }
        let at = state.table.wrapping_add(u64::from(index) * 16);
        let (Some(lo), Some(hi)) = (
            read_u64(&self.mem, at),
            read_u64(&self.mem, at.wrapping_add(8)),
        ) else {
            return Err(fault(
                FaultReason::InterruptTableInaccessible,
                recorded,
                false,
            ));
        };
        let entry = Irte { lo, hi };
        if !entry.present() {
            return Err(fault(
                FaultReason::InterruptEntryNotPresent,
                recorded,
                entry.fpd(),
            ));
        }
        if entry.reserved(state.eime) {
            return Err(fault(
                FaultReason::InterruptEntryReserved,
                recorded,
                entry.fpd(),
            ));
        }
        if let InterruptSource::Device(sid) = source
            && !entry.source_allowed(sid)
        {
            return Err(fault(
                FaultReason::InterruptSourceBlocked,
                recorded,
                entry.fpd(),
            ));
        }
        Ok(entry.message(state.eime))
    }
}

impl RemappingUnit {
    /// What becomes of an interrupt request (an MSI write of `msg`) from `source`: the message to
    /// deliver, or the fault that blocks it. With interrupt remapping off, and for writes outside
    /// the interrupt range, the message is returned as it is. Nothing is recorded: a caller that
    /// delivers the interrupt now passes a fault to [`RemappingUnit::report_interrupt_fault`]; one
    /// that only caches the translation (a KVM route) asks again when the interrupt happens.
    pub fn remap_interrupt(
        &self,
        source: InterruptSource,
        msg: MsiMessage,
    ) -> Result<MsiMessage, InterruptFault> {
        self.inner.remap(source, msg)
    }

    /// Records an interrupt-remapping fault (unless the entry's FPD suppresses it) and raises the
    /// fault event.
    pub fn report_interrupt_fault(&self, fault: &InterruptFault) {
        let inner = &*self.inner;
        inner.stats.faults.fetch_add(1, Ordering::Relaxed);
        if fault.fpd && fault.reason.qualified() {
            return;
        }
        log::debug!("interrupt blocked: {fault:?}");
        let msgs = crate::unit_lock(&inner.regs).record_fault(
            fault.source.sid(),
            u64::from(fault.index) << 48,
            fault.reason,
            false,
        );
        inner.send(msgs);
    }

    /// Registers who caches interrupt translations. The unit holds it weakly (the listener
    /// usually holds the unit); only the first registration counts.
    pub fn set_interrupt_cache_listener(
        &self,
        listener: std::sync::Weak<dyn InterruptCacheListener>,
    ) {
        let _ = self.inner.ir_listener.set(listener);
    }
}
