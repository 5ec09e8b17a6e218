//! Interrupt remapping driven as Linux drives it: a table in guest memory, IRTA + SIRTP, IRE,
//! remappable MSIs, IEC invalidation, and the faults of chapter 5.

use std::sync::{Arc, Mutex};

use super::*;
use crate::spec::irte;
use crate::{InterruptCacheListener, InterruptCacheScope, InterruptFault, InterruptSource};

/// Remembers what the unit told it, with the invalidation-wait status word at `status` as it was
/// at that moment.
struct Heard {
    mem: Arc<Memory>,
    status: u64,
    scopes: Mutex<Vec<(InterruptCacheScope, u32)>>,
}

impl InterruptCacheListener for Heard {
    fn invalidate(&self, scope: InterruptCacheScope) {
        let status = self.mem.read_obj(GuestAddress(self.status)).unwrap();
        self.scopes.lock().unwrap().push((scope, status));
    }
}

impl Heard {
    fn take_with_status(&self) -> Vec<(InterruptCacheScope, u32)> {
        std::mem::take(&mut *self.scopes.lock().unwrap())
    }

    fn take(&self) -> Vec<InterruptCacheScope> {
        self.take_with_status()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }
}

const DEV: InterruptSource = InterruptSource::Device(SID);

/// A remappable MSI for `handle`, with `subhandle` in the data when given (SHV).
fn remappable(handle: u16, subhandle: Option<u16>) -> MsiMessage {
    MsiMessage {
        address: crate::spec::msi::remappable_address(handle, subhandle.is_some()),
        data: subhandle.map_or(0, u32::from),
    }
}

/// The low quadword of a present, edge, fixed, physical entry for `vector` and an xAPIC `dest`.
fn xapic_entry(vector: u8, dest: u8) -> u64 {
    irte::P | (u64::from(vector) << 16) | (u64::from(dest) << 40)
}

struct IrRig {
    rig: Rig,
    table: u64,
    /// A status word for invalidation waits.
    status: u64,
    heard: Arc<Heard>,
}

impl IrRig {
    /// A unit with queued invalidation on and a 256-entry table (S = 7) latched; IRE set when
    /// `enable`; EIME as given.
    fn new(config: Config, eime: bool, enable: bool) -> Self {
        let mut rig = Rig::new(config);
        let status = rig.alloc();
        let heard = Arc::new(Heard {
            mem: rig.mem.clone(),
            status,
            scopes: Mutex::default(),
        });
        let weak: std::sync::Weak<dyn InterruptCacheListener> = Arc::downgrade(&heard) as _;
        rig.unit.set_interrupt_cache_listener(weak);
        rig.enable_qi();
        let table = rig.alloc();
        rig.w64(reg::IRTA, table | if eime { 1 << 11 } else { 0 } | 7);
        rig.command(gcmd::SIRTP);
        if enable {
            rig.command(gcmd::IRE);
        }
        heard.take();
        Self {
            rig,
            table,
            status,
            heard,
        }
    }

    fn set_entry(&self, index: u64, lo: u64, hi: u64) {
        self.rig.set_q(self.table + index * 16, lo);
        self.rig.set_q(self.table + index * 16 + 8, hi);
    }

    fn remap(
        &self,
        source: InterruptSource,
        msg: MsiMessage,
    ) -> Result<MsiMessage, InterruptFault> {
        self.rig.unit.remap_interrupt(source, msg)
    }

    fn reason(&self, source: InterruptSource, msg: MsiMessage) -> FaultReason {
        self.remap(source, msg).unwrap_err().reason
    }
}

#[test]
fn sirtp_ire_and_cfi_set_their_status_and_tell_the_listener() {
    let ir = IrRig::new(Config::default(), false, false);
    let gsts = ir.rig.r32(reg::GSTS);
    assert_ne!(gsts & gcmd::SIRTP, 0, "IRTPS");
    assert_eq!(gsts & (gcmd::IRE | gcmd::CFI), 0);
    ir.rig.command(gcmd::IRE);
    assert_ne!(ir.rig.r32(reg::GSTS) & gcmd::IRE, 0, "IRES");
    assert_eq!(ir.heard.take(), vec![InterruptCacheScope::All]);
    ir.rig.command(gcmd::CFI);
    assert_ne!(ir.rig.r32(reg::GSTS) & gcmd::CFI, 0, "CFIS");
    assert_eq!(ir.heard.take(), vec![InterruptCacheScope::All]);
    // Repeating the level bits changes nothing and says nothing.
    ir.rig.command(0);
    assert!(ir.heard.take().is_empty());
    ir.rig.w32(reg::GCMD, gcmd::IRE);
    assert_eq!(ir.rig.r32(reg::GSTS) & gcmd::CFI, 0, "CFI cleared");
    assert_eq!(ir.heard.take(), vec![InterruptCacheScope::All]);
    ir.rig.w32(reg::GCMD, 0);
    assert_eq!(ir.rig.r32(reg::GSTS) & gcmd::IRE, 0, "IRE cleared");

    // A unit without interrupt remapping ignores all three.
    let rig = Rig::new(Config {
        interrupt_remapping: false,
        extended_interrupt_mode: false,
        ..Config::default()
    });
    rig.w32(reg::GCMD, gcmd::SIRTP | gcmd::IRE | gcmd::CFI);
    assert_eq!(
        rig.r32(reg::GSTS) & (gcmd::SIRTP | gcmd::IRE | gcmd::CFI),
        0
    );
    assert_eq!(
        rig.unit.remap_interrupt(DEV, remappable(1, None)),
        Ok(remappable(1, None)),
        "no remapping: passed as it is"
    );
}

#[test]
fn a_remappable_msi_is_delivered_as_its_entry_says() {
    let ir = IrRig::new(Config::default(), false, true);
    // Entry 0x85 = handle 0x80 + subhandle 5: vector 0x5a to APIC 3, logical, redirection hint,
    // level, lowest priority.
    let lo = xapic_entry(0x5a, 3) | irte::DM | irte::RH | irte::TM | (1 << 5) | (0xf << 8);
    ir.set_entry(0x85, lo, 0);
    let out = ir.remap(DEV, remappable(0x80, Some(5))).unwrap();
    assert_eq!(
        out,
        MsiMessage {
            address: 0xfee0_3000 | (1 << 3) | (1 << 2),
            data: 0x5a | (1 << 8) | (1 << 14) | (1 << 15),
        }
    );
    // Without SHV the data is ignored: the handle alone is the index.
    ir.set_entry(0x80, xapic_entry(0x61, 0), 0);
    let mut msg = remappable(0x80, None);
    msg.data = 0xdead_beef;
    assert_eq!(
        ir.remap(DEV, msg),
        Ok(MsiMessage {
            address: 0xfee0_0000,
            data: 0x61
        })
    );
    // Address bits 1:0 are don't-care.
    let mut msg = remappable(0x80, None);
    msg.address |= 3;
    assert_eq!(ir.remap(DEV, msg).unwrap().data, 0x61);
    // A write outside the interrupt range is not an interrupt: untouched.
    let dma = MsiMessage {
        address: 0x1000,
        data: 7,
    };
    assert_eq!(ir.remap(DEV, dma), Ok(dma));
    // Handle bit 15 is address bit 2.
    assert_eq!(
        crate::interrupt_index(remappable(0x8001, Some(2))),
        Some(0x8003)
    );
}

#[test]
fn extended_interrupt_mode_takes_32_bit_destinations() {
    let ir = IrRig::new(Config::default(), true, true);
    ir.set_entry(2, irte::P | (0x44 << 16) | (0x0123_4567 << 32), 0);
    assert_eq!(
        ir.remap(DEV, remappable(2, None)),
        Ok(MsiMessage {
            // Destination bits 7:0 at 19:12, bits 31:8 in the upper dword's bits 31:8.
            address: (0x01_2345 << 40) | 0xfee6_7000,
            data: 0x44
        })
    );
    // The same entry read as xAPIC (EIME clear): bits 47:40 are the destination, and bits 39:32
    // and 63:48 are reserved.
    let xapic = IrRig::new(Config::default(), false, true);
    xapic.set_entry(2, irte::P | (0x44 << 16) | (0x0123_4567 << 32), 0);
    assert_eq!(
        xapic.reason(DEV, remappable(2, None)),
        FaultReason::InterruptEntryReserved
    );
    xapic.set_entry(2, irte::P | (0x44 << 16) | (0x45 << 40), 0);
    assert_eq!(
        xapic.remap(DEV, remappable(2, None)).unwrap().address,
        0xfee4_5000
    );
    // A unit without EIM never enters extended mode, whatever IRTA says.
    let no_eim = IrRig::new(
        Config {
            extended_interrupt_mode: false,
            ..Config::default()
        },
        true,
        true,
    );
    no_eim.set_entry(2, irte::P | (0x44 << 16) | (0x0123_4567 << 32), 0);
    assert_eq!(
        no_eim.reason(DEV, remappable(2, None)),
        FaultReason::InterruptEntryReserved
    );
}

#[test]
fn compatibility_format_passes_only_with_cfi_outside_extended_mode() {
    let compat = MsiMessage {
        address: 0xfee0_1000,
        data: 0x30,
    };
    let ir = IrRig::new(Config::default(), false, true);
    let fault = ir.remap(DEV, compat).unwrap_err();
    assert_eq!(fault.reason, FaultReason::CompatibilityBlocked);
    assert_eq!(fault.source, DEV);
    ir.rig.command(gcmd::CFI);
    assert_eq!(ir.remap(DEV, compat), Ok(compat));
    let eim = IrRig::new(Config::default(), true, true);
    eim.rig.command(gcmd::CFI);
    assert_eq!(
        eim.reason(DEV, compat),
        FaultReason::CompatibilityBlocked,
        "EIME blocks them whatever CFI says"
    );
    // With IRE clear everything passes, remappable or not.
    let off = IrRig::new(Config::default(), true, false);
    assert_eq!(off.remap(DEV, compat), Ok(compat));
    assert_eq!(off.remap(DEV, remappable(9, None)), Ok(remappable(9, None)));
}

#[test]
fn every_interrupt_remapping_fault_reason_is_found_and_recorded() {
    let ir = IrRig::new(Config::default(), false, true);
    let ok = xapic_entry(0x40, 0);
    let mut cases: Vec<(MsiMessage, u64, u64, FaultReason)> = vec![
        (
            MsiMessage {
                data: 0x1_0000,
                ..remappable(1, Some(0))
            },
            ok,
            0,
            FaultReason::InterruptRequestReserved,
        ),
        (
            remappable(256, None),
            ok,
            0,
            FaultReason::InterruptIndexBeyondTable,
        ),
        (
            remappable(250, Some(6)),
            ok,
            0,
            FaultReason::InterruptIndexBeyondTable,
        ),
        (
            remappable(1, None),
            ok & !irte::P,
            0,
            FaultReason::InterruptEntryNotPresent,
        ),
        (
            remappable(1, None),
            ok,
            0b11 << 18,
            FaultReason::InterruptEntryReserved,
        ),
        (
            remappable(1, None),
            ok,
            0,
            FaultReason::InterruptSourceBlocked,
        ),
    ];
    // Reserved bits 14:12, the posted mode bit, 31:24, xAPIC destination bits 39:32 and 63:48,
    // and delivery modes 011b and 110b.
    for reserved in [1 << 12, 1 << 15, 1 << 24, 1 << 32, 1 << 48, 3 << 5, 6 << 5] {
        cases.push((
            remappable(1, None),
            ok | reserved,
            0,
            FaultReason::InterruptEntryReserved,
        ));
    }
    cases.push((
        remappable(1, None),
        ok,
        1 << 20,
        FaultReason::InterruptEntryReserved,
    ));
    for (msg, lo, hi, reason) in cases {
        // The source-id case: verify all 16 bits against another requester.
        let hi = if reason == FaultReason::InterruptSourceBlocked {
            (1 << 18) | u64::from(SID + 1)
        } else {
            hi
        };
        ir.set_entry(1, lo, hi);
        assert_eq!(ir.reason(DEV, msg), reason, "{msg:x?} {lo:#x} {hi:#x}");
    }
    // A table outside guest memory.
    ir.rig.w64(reg::IRTA, (MEM_SIZE + 0x10_0000) | 7);
    ir.rig.command(gcmd::SIRTP);
    assert_eq!(
        ir.reason(DEV, remappable(3, None)),
        FaultReason::InterruptTableInaccessible
    );

    // Reporting: the record holds the index in bits 63:48, the requester, the reason, T = 0.
    ir.rig.msis.take();
    let fault = ir.remap(DEV, remappable(3, None)).unwrap_err();
    ir.rig.unit.report_interrupt_fault(&fault);
    let (lo, hi) = ir.rig.record(0);
    assert_eq!(lo, 3 << 48);
    assert_eq!(reason_of(hi), 0x23);
    assert_eq!(hi & 0xffff, u64::from(SID));
    assert_eq!(hi & (1 << 62), 0, "interrupt requests are writes");
    assert_ne!(ir.rig.r32(reg::FSTS) & fsts::PPF, 0);
    assert_eq!(ir.rig.msis.take(), vec![FAULT_MSI]);
    // The I/O APIC's id goes in its records.
    let fault = InterruptFault {
        source: InterruptSource::Ioapic(0xf0f8),
        ..fault
    };
    ir.rig.unit.report_interrupt_fault(&fault);
    assert_eq!(ir.rig.record(1).1 & 0xffff, 0xf0f8);
    assert_eq!(ir.rig.unit.snapshot().faults, 2);
}

#[test]
fn fpd_suppresses_entry_faults_but_not_request_faults() {
    let ir = IrRig::new(Config::default(), false, true);
    let fpd = irte::FPD;
    // Qualified: not present, reserved, source-id. Each is detected but not recorded.
    for (lo, hi) in [
        (fpd, 0),
        (xapic_entry(0x40, 0) | fpd | (1 << 12), 0),
        (xapic_entry(0x40, 0) | fpd, (1 << 18) | 0x1234),
    ] {
        ir.set_entry(4, lo, hi);
        let fault = ir.remap(DEV, remappable(4, None)).unwrap_err();
        assert!(fault.fpd && fault.reason.qualified(), "{fault:?}");
        ir.rig.unit.report_interrupt_fault(&fault);
    }
    assert_eq!(ir.rig.r32(reg::FSTS) & fsts::PPF, 0, "nothing recorded");
    assert!(ir.rig.msis.take().is_empty());
    // An index beyond the table is recorded whatever the entries say.
    let fault = ir.remap(DEV, remappable(300, None)).unwrap_err();
    ir.rig.unit.report_interrupt_fault(&fault);
    assert_eq!(reason_of(ir.rig.record(0).1), 0x21);
    assert_eq!(ir.rig.unit.snapshot().faults, 4, "all counted");
}

#[test]
fn source_ids_are_verified_as_svt_and_sq_say_and_never_for_the_ioapic() {
    let ir = IrRig::new(Config::default(), false, true);
    let lo = xapic_entry(0x40, 0);
    // (SVT, SQ, entry SID, requester, allowed)
    let cases = [
        (0, 0, 0x0000, 0xffff, true),
        (1, 0, 0x0018, 0x0018, true),
        (1, 0, 0x0018, 0x0019, false),
        (1, 1, 0x0018, 0x001c, true),
        (1, 1, 0x0018, 0x001a, false),
        (1, 2, 0x0018, 0x001e, true),
        (1, 2, 0x0018, 0x0019, false),
        (1, 3, 0x0018, 0x001f, true),
        (1, 3, 0x0018, 0x0020, false),
        (1, 3, 0x0018, 0x0118, false),
        (2, 0, 0x0204, 0x0200, true),
        (2, 0, 0x0204, 0x04ff, true),
        (2, 0, 0x0204, 0x0100, false),
        (2, 0, 0x0204, 0x0500, false),
    ];
    for (svt, sq, sid, requester, allowed) in cases {
        ir.set_entry(7, lo, (svt << 18) | (sq << 16) | sid);
        let result = ir.remap(InterruptSource::Device(requester), remappable(7, None));
        assert_eq!(
            result.is_ok(),
            allowed,
            "SVT {svt} SQ {sq} SID {sid:#x} requester {requester:#x}: {result:?}"
        );
        assert!(
            ir.remap(InterruptSource::Ioapic(requester), remappable(7, None))
                .is_ok(),
            "the I/O APIC is not verified"
        );
    }
}

#[test]
fn iec_descriptors_name_their_entries_before_the_wait_completes() {
    let mut ir = IrRig::new(Config::default(), false, true);
    let iec = |g: u64, im: u64, idx: u64| (desc::IEC | (g << 4) | (im << 27) | (idx << 32), 0);
    let entries = |first, last| InterruptCacheScope::Entries { first, last };
    // One descriptor and its wait per batch: the scope each names, told before the status write.
    for (seq, (d, scope)) in [
        (iec(0, 0, 0), InterruptCacheScope::All),
        (iec(1, 0, 5), entries(5, 5)),
        (iec(1, 2, 0x13), entries(0x10, 0x13)),
        (iec(1, 20, 0x1234), entries(0, 0xffff)),
    ]
    .into_iter()
    .enumerate()
    {
        let seq = seq as u32 + 1;
        ir.rig.submit(&[d, wait_sw(seq, ir.status)]);
        assert_eq!(
            ir.heard.take_with_status(),
            vec![(scope, seq - 1)],
            "{d:x?}"
        );
        assert_eq!(ir.rig.q(ir.status) as u32, seq);
    }
    assert_eq!(ir.rig.unit.snapshot().inv_iec, 4);
    // Several before one wait: one call covering them all, still before the status write.
    ir.rig
        .submit(&[iec(1, 0, 9), iec(1, 1, 0x20), wait_sw(9, ir.status)]);
    assert_eq!(ir.heard.take_with_status(), vec![(entries(9, 0x21), 4)]);
    // Without a wait, the end of the run tells the listener.
    ir.rig.submit(&[iec(1, 0, 3)]);
    assert_eq!(ir.heard.take(), vec![entries(3, 3)]);
    // A malformed IEC descriptor (a bit in the reserved high quadword) is a queue error; the
    // well-formed one before it is still told.
    ir.rig.submit(&[iec(1, 0, 7), (desc::IEC, 1)]);
    assert_ne!(ir.rig.r32(reg::FSTS) & fsts::IQE, 0);
    assert_eq!(ir.heard.take(), vec![entries(7, 7)]);
}

#[test]
fn a_scope_covers_the_messages_whose_index_it_names() {
    let (a, b) = (
        InterruptCacheScope::Entries { first: 4, last: 7 },
        InterruptCacheScope::Entries { first: 9, last: 9 },
    );
    assert_eq!(
        a.union(b),
        InterruptCacheScope::Entries { first: 4, last: 9 }
    );
    assert_eq!(b.union(InterruptCacheScope::All), InterruptCacheScope::All);
    let scope = InterruptCacheScope::Entries { first: 4, last: 7 };
    assert!(scope.covers(remappable(4, None)));
    assert!(scope.covers(remappable(2, Some(5))));
    assert!(!scope.covers(remappable(8, None)));
    assert!(!scope.covers(remappable(3, None)));
    let compat = MsiMessage {
        address: 0xfee0_0000,
        data: 0x30,
    };
    assert!(!scope.covers(compat), "compatibility format has no index");
    assert!(InterruptCacheScope::All.covers(compat));
}
