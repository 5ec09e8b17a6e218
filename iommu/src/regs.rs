//! The register page: decoding 32- and 64-bit MMIO accesses, the global command, register-based
//! invalidation, fault status and recording, and the two event interrupts.
//!
//! Registers are kept as 32-bit halves: a 64-bit register may be written as two 32-bit writes, and
//! the commands in the high half (CCMD.ICC, IOTLB.IVT) act when that half is written; IQT acts on
//! its low half, which is all Linux writes.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use crate::intremap::InterruptCacheScope;
use crate::spec::{FaultReason, VERSION, ccmd, event, fsts, gcmd, iotlb, irta, reg};
use crate::unit::{Inner, MsiMessage, RemappingUnit};

/// One fault recording register (section 11.4.7.2): 128 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultRecord {
    lo: u64,
    hi: u64,
}

/// Fault record high quadword fields.
const FRCD_F: u64 = 1 << 63;
const FRCD_T_READ: u64 = 1 << 62;
const FRCD_FR_SHIFT: u32 = 32;

impl FaultRecord {
    fn pending(&self) -> bool {
        self.hi & FRCD_F != 0
    }
}

/// An event-interrupt control pair (FECTL or IECTL) and its message registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EventControl {
    masked: bool,
    pending: bool,
    data: u32,
    addr: u32,
    upper: u32,
}

impl EventControl {
    /// Reset state: masked.
    fn new() -> Self {
        Self {
            masked: true,
            pending: false,
            data: 0,
            addr: 0,
            upper: 0,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: (u64::from(self.upper) << 32) | u64::from(self.addr & !3),
            data: self.data,
        }
    }

    /// An interrupt condition arose: send it now, or leave it pending while masked.
    fn raise(&mut self, out: &mut Vec<MsiMessage>) {
        if self.pending {
            return;
        }
        if self.masked {
            self.pending = true;
        } else {
            out.push(self.message());
        }
    }

    /// A read of the group's register at `rel`: control, data, address, upper address (the
    /// same layout for the fault event at FECTL and the invalidation event at IECTL).
    fn read(&self, rel: u64) -> u32 {
        match rel {
            0 => {
                (if self.masked { event::IM } else { 0 })
                    | (if self.pending { event::IP } else { 0 })
            }
            4 => self.data,
            8 => self.addr,
            12 => self.upper,
            _ => 0,
        }
    }

    /// A write of the group's register at `rel`; unmasking sends what is pending.
    fn write(&mut self, rel: u64, value: u32, out: &mut Vec<MsiMessage>) {
        match rel {
            0 => {
                self.masked = value & event::IM != 0;
                if !self.masked && self.pending {
                    self.pending = false;
                    out.push(self.message());
                }
            }
            4 => self.data = value,
            8 => self.addr = value & !3,
            12 => self.upper = value,
            _ => {}
        }
    }
}

/// The mutable register state.
#[derive(Debug)]
pub(crate) struct Regs {
    pub gsts: u32,
    rtaddr: u64,
    ccmd: u64,
    /// The write-1-to-clear FSTS bits (PFO, IQE, ICE, ITE); PPF and FRI are derived.
    pub fsts: u32,
    pub fault_event: EventControl,
    records: Vec<FaultRecord>,
    next_record: usize,
    pub iqh: u64,
    pub iqt: u64,
    pub iqa: u64,
    pub ics: u32,
    pub inv_event: EventControl,
    irta: u64,
    iva: u64,
    iotlb_reg: u64,
}

fn set_half(reg: &mut u64, high: bool, value: u32) {
    *reg = if high {
        (*reg & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*reg & !0xffff_ffff) | u64::from(value)
    };
}

fn half(reg: u64, high: bool) -> u32 {
    if high { (reg >> 32) as u32 } else { reg as u32 }
}

impl Regs {
    pub fn new(fault_records: usize) -> Self {
        Self {
            gsts: 0,
            rtaddr: 0,
            ccmd: 0,
            fsts: 0,
            fault_event: EventControl::new(),
            records: vec![FaultRecord::default(); fault_records],
            next_record: 0,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            inv_event: EventControl::new(),
            irta: 0,
            iva: 0,
            iotlb_reg: 0,
        }
    }

    /// Whether any fault-event condition is outstanding (a pending record, PFO or IQE).
    fn fault_conditions(&self) -> bool {
        self.fsts & (fsts::PFO | fsts::IQE) != 0 || self.records.iter().any(FaultRecord::pending)
    }

    fn fsts_value(&self) -> u32 {
        let n = self.records.len();
        // The oldest pending record: the first pending one from the slot after the newest.
        let first = (0..n)
            .map(|i| (self.next_record + i) % n)
            .find(|&i| self.records.get(i).is_some_and(FaultRecord::pending));
        match first {
            Some(i) => self.fsts | fsts::PPF | ((i as u32) << fsts::FRI_SHIFT),
            None => self.fsts,
        }
    }

    /// Records a primary fault in the next record, or sets PFO if that record is still pending.
    /// Raises the fault event if no fault condition was outstanding before.
    pub fn record_fault(
        &mut self,
        sid: u16,
        iova: u64,
        reason: FaultReason,
        read: bool,
    ) -> Vec<MsiMessage> {
        let mut out = Vec::new();
        let before = self.fault_conditions();
        let n = self.records.len();
        match self.records.get_mut(self.next_record) {
            Some(rec) if !rec.pending() => {
                rec.lo = iova & !0xfff;
                rec.hi = FRCD_F
                    | (if read { FRCD_T_READ } else { 0 })
                    | ((reason as u64) << FRCD_FR_SHIFT)
                    | u64::from(sid);
                self.next_record = (self.next_record + 1) % n;
            }
            _ => self.fsts |= fsts::PFO,
        }
        if !before {
            self.fault_event.raise(&mut out);
        }
        out
    }

    /// Sets FSTS.IQE (processing stops until software clears it) and raises the fault event.
    pub fn queue_error(&mut self) -> Vec<MsiMessage> {
        let mut out = Vec::new();
        let before = self.fault_conditions();
        self.fsts |= fsts::IQE;
        if !before {
            self.fault_event.raise(&mut out);
        }
        out
    }

    /// An invalidation wait with IF completed: ICS.IWC and the invalidation event.
    pub fn wait_completed(&mut self, out: &mut Vec<MsiMessage>) {
        if self.ics & crate::spec::iq::ICS_IWC == 0 {
            self.ics |= crate::spec::iq::ICS_IWC;
            self.inv_event.raise(out);
        }
    }

    /// Software cleared conditions: with none left, a masked pending event is dropped.
    fn settle_fault_event(&mut self) {
        if !self.fault_conditions() {
            self.fault_event.pending = false;
        }
    }
}

impl RemappingUnit {
    /// A guest read of `data.len()` bytes at `offset` into the register page. Registers are read
    /// with aligned 32- or 64-bit accesses; anything else reads as zeros.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match data.len() {
            4 if offset.is_multiple_of(4) => u64::from(self.read32(offset)),
            8 if offset.is_multiple_of(8) => {
                u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
            }
            _ => return,
        };
        for (dst, src) in data.iter_mut().zip(value.to_le_bytes()) {
            *dst = src;
        }
    }

    /// A guest write at `offset` into the register page: aligned 32- or 64-bit; others are ignored.
    /// Every command completes before this returns.
    pub fn mmio_write(&self, offset: u64, data: &[u8]) {
        let mut bytes = [0u8; 8];
        for (dst, src) in bytes.iter_mut().zip(data) {
            *dst = *src;
        }
        let value = u64::from_le_bytes(bytes);
        match data.len() {
            4 if offset.is_multiple_of(4) => self.write32(offset, value as u32),
            8 if offset.is_multiple_of(8) => {
                self.write32(offset, value as u32);
                self.write32(offset + 4, (value >> 32) as u32);
            }
            _ => log::debug!("VT-d: ignored {}-byte write at {offset:#x}", data.len()),
        }
    }

    fn read32(&self, offset: u64) -> u32 {
        let inner = &*self.inner;
        let regs = crate::unit_lock(&inner.regs);
        let high = offset % 8 == 4;
        let reg64 = offset & !7;
        let frcd_end = reg::FRCD + 16 * regs_len(&regs);
        match offset {
            reg::VER => VERSION,
            _ if reg64 == reg::CAP => half(inner.cap, high),
            _ if reg64 == reg::ECAP => half(inner.ecap, high),
            reg::GSTS => regs.gsts,
            _ if reg64 == reg::RTADDR => half(regs.rtaddr, high),
            _ if reg64 == reg::CCMD => half(regs.ccmd, high),
            reg::FSTS => regs.fsts_value(),
            reg::FECTL..=reg::FEUADDR => regs.fault_event.read(offset - reg::FECTL),
            _ if reg64 == reg::IQH => half(regs.iqh, high),
            _ if reg64 == reg::IQT => half(regs.iqt, high),
            _ if reg64 == reg::IQA => half(regs.iqa, high),
            reg::ICS => regs.ics,
            reg::IECTL..=reg::IEUADDR => regs.inv_event.read(offset - reg::IECTL),
            _ if reg64 == reg::IRTA => half(regs.irta, high),
            _ if reg64 == reg::IVA => half(regs.iva, high),
            _ if reg64 == reg::IOTLB => half(regs.iotlb_reg, high),
            _ if (reg::FRCD..frcd_end).contains(&offset) => {
                let rel = offset - reg::FRCD;
                let rec = regs
                    .records
                    .get((rel / 16) as usize)
                    .copied()
                    .unwrap_or_default();
                let q = if rel % 16 < 8 { rec.lo } else { rec.hi };
                half(q, rel % 8 == 4)
            }
            // GCMD is write-only; unknown offsets read 0.
            _ => 0,
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        let inner = &*self.inner;
        let mut out = Vec::new();
        {
            let mut regs = crate::unit_lock(&inner.regs);
            let high = offset % 8 == 4;
            let reg64 = offset & !7;
            let frcd_end = reg::FRCD + 16 * regs_len(&regs);
            match offset {
                reg::GCMD => global_command(inner, &mut regs, value, &mut out),
                _ if reg64 == reg::RTADDR => set_half(&mut regs.rtaddr, high, value),
                _ if reg64 == reg::CCMD => {
                    set_half(&mut regs.ccmd, high, value);
                    if high && regs.ccmd & ccmd::ICC != 0 {
                        context_command(inner, &mut regs);
                    }
                }
                reg::FSTS => {
                    let had_iqe = regs.fsts & fsts::IQE != 0;
                    regs.fsts &= !(value & fsts::RW1C);
                    regs.settle_fault_event();
                    if had_iqe && regs.fsts & fsts::IQE == 0 {
                        // Software fixed the queue: fetching resumes from IQH.
                        crate::qi::process(inner, &mut regs, &mut out);
                    }
                }
                reg::FECTL..=reg::FEUADDR => {
                    regs.fault_event.write(offset - reg::FECTL, value, &mut out)
                }
                // The descriptor index is all in the low half; the high half is reserved.
                _ if reg64 == reg::IQT && !high => {
                    regs.iqt = u64::from(value) & crate::spec::iq::INDEX_MASK;
                    crate::qi::process(inner, &mut regs, &mut out);
                }
                _ if reg64 == reg::IQA => set_half(&mut regs.iqa, high, value),
                reg::ICS if value & crate::spec::iq::ICS_IWC != 0 => {
                    regs.ics &= !crate::spec::iq::ICS_IWC;
                    regs.inv_event.pending = false;
                }
                reg::IECTL..=reg::IEUADDR => {
                    regs.inv_event.write(offset - reg::IECTL, value, &mut out)
                }
                _ if reg64 == reg::IRTA => set_half(&mut regs.irta, high, value),
                _ if reg64 == reg::IVA => set_half(&mut regs.iva, high, value),
                _ if reg64 == reg::IOTLB => {
                    set_half(&mut regs.iotlb_reg, high, value);
                    if high && regs.iotlb_reg & iotlb::IVT != 0 {
                        iotlb_command(inner, &mut regs);
                    }
                }
                _ if (reg::FRCD..frcd_end).contains(&offset) => {
                    // Only F (bit 127, in the record's last dword) is writable: write 1 to clear.
                    let rel = offset - reg::FRCD;
                    if rel % 16 == 12 && value & (1 << 31) != 0 {
                        if let Some(rec) = regs.records.get_mut((rel / 16) as usize) {
                            rec.hi &= !FRCD_F;
                        }
                        regs.settle_fault_event();
                    }
                }
                // Read-only and unknown registers ignore writes.
                _ => {}
            }
        }
        inner.send(out);
    }
}

fn regs_len(regs: &Regs) -> u64 {
    regs.records.len() as u64
}

/// GCMD (section 10.4.4): level commands set their status; one-shot commands act and set theirs.
/// One-shot bits copied back from GSTS repeat their commands: SRTP and SIRTP latch their
/// registers again (as the specification has it), WBF completes at once.
fn global_command(inner: &Inner, regs: &mut Regs, value: u32, out: &mut Vec<MsiMessage>) {
    let old = regs.gsts;
    let mut gsts = old;
    // Translation enable.
    let te = value & gcmd::TE != 0;
    if te != (old & gcmd::TE != 0) {
        gsts = (gsts & !gcmd::TE) | (value & gcmd::TE);
        inner.te.store(te, Ordering::SeqCst);
        inner.translation_changed();
    }
    // Queued invalidation enable: the queue starts at its head.
    let qie = value & gcmd::QIE != 0 && inner.config.queued_invalidation;
    if qie != (old & gcmd::QIE != 0) {
        if qie {
            regs.iqh = 0;
            gsts |= gcmd::QIE;
        } else {
            gsts &= !gcmd::QIE;
        }
    }
    if value & gcmd::SRTP != 0 {
        inner
            .root_table
            .store(regs.rtaddr & !0xfff, Ordering::SeqCst);
        inner.translation_changed();
        gsts |= gcmd::SRTP;
    }
    if inner.config.interrupt_remapping {
        interrupt_remapping_command(inner, regs, value, &mut gsts);
    }
    // WBF completes at once, so its status never shows; SFL and EAFL are not offered.
    regs.gsts = gsts;
    let _ = out;
}

/// The interrupt-remapping part of GCMD: SIRTP latches IRTA; IRE and CFI are level commands.
/// Any of them changes how interrupts translate, so the interrupt cache listener hears of it
/// before the write completes.
fn interrupt_remapping_command(inner: &Inner, regs: &Regs, value: u32, gsts: &mut u32) {
    let old = *gsts;
    let mut changed = false;
    {
        let mut guard = inner.ir.write().unwrap_or_else(PoisonError::into_inner);
        let ir = &mut *guard;
        if value & gcmd::SIRTP != 0 {
            ir.table = regs.irta & !0xfff;
            ir.entries = 2 << (regs.irta & irta::S_MASK);
            ir.eime = regs.irta & irta::EIME != 0 && inner.config.extended_interrupt_mode;
            *gsts |= gcmd::SIRTP;
            changed = true;
        }
        for (bit, field) in [
            (gcmd::IRE, &mut ir.enabled),
            (gcmd::CFI, &mut ir.compatibility),
        ] {
            let on = value & bit != 0;
            if on != (old & bit != 0) {
                *gsts = (*gsts & !bit) | (value & bit);
                *field = on;
                changed = true;
            }
        }
    }
    if changed {
        inner.interrupt_cache_invalidated(InterruptCacheScope::All);
    }
}

/// CCMD with ICC set: register-based context-cache invalidation.
fn context_command(inner: &Inner, regs: &mut Regs) {
    let v = regs.ccmd;
    let gran = (v >> ccmd::CIRG_SHIFT) & 3;
    let did = (v & 0xffff) as u16;
    let sid = ((v >> ccmd::SID_SHIFT) & 0xffff) as u16;
    let fm = ((v >> ccmd::FM_SHIFT) & 3) as u8;
    // Granularity 0 is reserved: treat it as global, which is always correct.
    let done = inner.invalidate_context(if gran == 0 { 1 } else { gran }, did, sid, fm);
    regs.ccmd = (v & !(ccmd::ICC | (3 << ccmd::CAIG_SHIFT))) | (done << ccmd::CAIG_SHIFT);
}

/// IOTLB register with IVT set: register-based IOTLB invalidation, address and mask from IVA.
fn iotlb_command(inner: &Inner, regs: &mut Regs) {
    let v = regs.iotlb_reg;
    let gran = (v >> iotlb::IIRG_SHIFT) & 3;
    let did = ((v >> iotlb::DID_SHIFT) & 0xffff) as u16;
    let addr = regs.iva & !0xfff;
    let am = (regs.iva & iotlb::IVA_AM_MASK) as u32;
    let done = inner.invalidate_iotlb(if gran == 0 { 1 } else { gran }, did, addr, am);
    regs.iotlb_reg = (v & !(iotlb::IVT | (3 << iotlb::IAIG_SHIFT))) | (done << iotlb::IAIG_SHIFT);
}
