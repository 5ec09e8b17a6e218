//! Queued invalidation (section 6.5.2): on a tail write the unit fetches 128-bit descriptors from
//! IQH up to IQT, wrapping around the queue, and executes each before moving IQH past it. A bad
//! descriptor (unknown or unsupported type, reserved bits, a status write outside memory) sets
//! FSTS.IQE with IQH left on it, and nothing more is fetched until software clears IQE.
//!
//! Interrupt entry cache invalidations are gathered and handed to the listener as one scope before
//! the next wait descriptor and at the end of the run: their completion can only be observed
//! through a wait, and a batch of them then costs one refresh of the VMM's routes.

use crate::intremap::InterruptCacheScope;
use crate::regs::Regs;
use crate::spec::{desc, fsts, gcmd, iq};
use crate::translate::{read_u64, write_u32};
use crate::unit::{Inner, MsiMessage};

/// Bits each descriptor type may set; any other set bit is a reserved-field error.
mod allowed {
    /// Context-cache: type, granularity (5:4), DID (31:16), SID (47:32), FM (49:48).
    pub const CONTEXT_LO: u64 = 0x3_ffff_ffff_0030 | 0xf;
    /// IOTLB: type, granularity, DW (6), DR (7), DID (31:16).
    pub const IOTLB_LO: u64 = 0xffff_00f0 | 0xf;
    /// IOTLB: address (63:12), IH (6), AM (5:0).
    pub const IOTLB_HI: u64 = !0xfff | 0x7f;
    /// Interrupt entry cache: type, granularity (4), index mask (31:27), index (47:32).
    pub const IEC_LO: u64 = 0xffff_f800_0010 | 0xf;
    /// Wait: type, IF (4), SW (5), FN (6), status data (63:32).
    pub const WAIT_LO: u64 = 0xffff_ffff_0000_0070 | 0xf;
    /// Wait: status address (63:2).
    pub const WAIT_HI: u64 = !3;
}

/// Runs the queue from IQH to IQT. Called with the register lock held (the lock orders
/// invalidations against MMIO); events go to `out` to be sent after it is released.
pub(crate) fn process(inner: &Inner, regs: &mut Regs, out: &mut Vec<MsiMessage>) {
    if regs.gsts & gcmd::QIE == 0 || regs.fsts & fsts::IQE != 0 {
        return;
    }
    // 256-bit descriptors belong to scalable mode, which this unit does not offer.
    if regs.iqa & iq::IQA_DW != 0 {
        out.extend(regs.queue_error());
        return;
    }
    let entries = 256u64 << (regs.iqa & iq::IQA_QS_MASK);
    let base = regs.iqa & !0xfff;
    let tail = regs.iqt >> 4;
    if tail >= entries {
        out.extend(regs.queue_error());
        return;
    }
    let mut head = (regs.iqh >> 4) % entries;
    let mut iec = None;
    while head != tail {
        let at = base.wrapping_add(head * 16);
        let lo = read_u64(&inner.mem, at);
        let hi = read_u64(&inner.mem, at.wrapping_add(8));
        let ok = match (lo, hi) {
            (Some(lo), Some(hi)) => execute(inner, regs, (lo, hi), &mut iec, out),
            _ => false,
        };
        if !ok {
            log::debug!("VT-d: invalidation queue error at descriptor {head}");
            regs.iqh = head << 4;
            flush_iec(inner, &mut iec);
            out.extend(regs.queue_error());
            return;
        }
        head = (head + 1) % entries;
    }
    flush_iec(inner, &mut iec);
    regs.iqh = head << 4;
}

/// Hands the gathered interrupt entry cache invalidations to the listener.
fn flush_iec(inner: &Inner, iec: &mut Option<InterruptCacheScope>) {
    if let Some(scope) = iec.take() {
        inner.interrupt_cache_invalidated(scope);
    }
}

/// The entries an interrupt entry cache descriptor names: all of them (G = 0), or 2^IM entries
/// from IIDX with its low IM bits ignored.
fn iec_scope(lo: u64) -> InterruptCacheScope {
    if lo & desc::IEC_INDEX_SELECTIVE == 0 {
        return InterruptCacheScope::All;
    }
    let index = ((lo >> 32) & 0xffff) as u16;
    let mask = (1u32 << ((lo >> 27) & 0x1f)).wrapping_sub(1);
    let span = u16::try_from(mask).unwrap_or(u16::MAX);
    InterruptCacheScope::Entries {
        first: index & !span,
        last: index | span,
    }
}

/// Executes one descriptor; false if it is malformed or unsupported. An IEC invalidation joins
/// `iec`, which a wait descriptor hands to the listener first.
fn execute(
    inner: &Inner,
    regs: &mut Regs,
    (lo, hi): (u64, u64),
    iec: &mut Option<InterruptCacheScope>,
    out: &mut Vec<MsiMessage>,
) -> bool {
    if lo & desc::TYPE_HIGH_MASK != 0 {
        return false;
    }
    let gran = (lo >> desc::GRANULARITY_SHIFT) & 3;
    let did = ((lo >> 16) & 0xffff) as u16;
    match lo & desc::TYPE_LOW_MASK {
        desc::CONTEXT => {
            if lo & !allowed::CONTEXT_LO != 0 || hi != 0 || gran == 0 {
                return false;
            }
            let sid = ((lo >> 32) & 0xffff) as u16;
            let fm = ((lo >> 48) & 3) as u8;
            inner.invalidate_context(gran, did, sid, fm);
            true
        }
        desc::IOTLB => {
            if lo & !allowed::IOTLB_LO != 0 || hi & !allowed::IOTLB_HI != 0 || gran == 0 {
                return false;
            }
            inner.invalidate_iotlb(gran, did, hi & !0xfff, (hi & 0x3f) as u32);
            true
        }
        desc::IEC => {
            if lo & !allowed::IEC_LO != 0 || hi != 0 {
                return false;
            }
            inner
                .stats
                .inv_iec
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Without interrupt remapping nothing is cached; the descriptor still completes.
            if inner.config.interrupt_remapping {
                let scope = iec_scope(lo);
                *iec = Some(iec.map_or(scope, |s| s.union(scope)));
            }
            true
        }
        desc::WAIT => {
            if lo & !allowed::WAIT_LO != 0 || hi & !allowed::WAIT_HI != 0 {
                return false;
            }
            inner
                .stats
                .inv_wait
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Everything before this descriptor has taken effect: invalidations are synchronous,
            // and the gathered interrupt entry invalidations are done now.
            flush_iec(inner, iec);
            if lo & desc::WAIT_SW != 0 {
                let status = (lo >> 32) as u32;
                if write_u32(&inner.mem, hi & allowed::WAIT_HI, status).is_none() {
                    return false;
                }
            }
            if lo & desc::WAIT_IF != 0 {
                regs.wait_completed(out);
            }
            true
        }
        // Device-TLB invalidation needs ECAP.DT; PASID-based and other types need scalable mode.
        _ => false,
    }
}
