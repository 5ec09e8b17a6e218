//! A guest that misprograms the VT-d unit on purpose and checks it gets the specification's answer
//! each time, with the VMM still serving: tables outside RAM or with reserved bits set (each DMA
//! of the edu device recorded as a fault with the right reason), garbage tables, a queue tail past
//! the queue and malformed descriptors (FSTS.IQE, IQH left on the bad descriptor, recovery once
//! IQE is cleared), fault-record overflow (PFO), and random values written to the registers.
//! Finally the unit is brought back to translation off and DMA works.
//!
//! Needs `--iommu` with queued invalidation and `--device edu`.

#![no_std]
#![no_main]

use core::ptr::write_volatile;

use guests::rt;
use guests::rt::edu::Edu;
use guests::rt::vtd::{self, Flush, Invalidation, Options, Vtd, gcmd, reason, reg};
use guests::{fail, println};

guests::entry!(main);

/// Not RAM: the 32-bit MMIO hole, where nothing decodes this address.
const NOT_RAM: u64 = 0xd000_0000;
const DOMAIN: u16 = 1;
const SCRATCH: u64 = 0x0300_0000;

fn wr64(addr: u64, v: u64) {
    // SAFETY: a table page from the pool, identity-mapped RAM.
    unsafe { write_volatile(addr as *mut u64, v) }
}

/// A small deterministic generator for garbage.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 ^ (self.0 >> 29)
    }
}

/// Makes the unit fetch everything again: context cache and IOTLB flushed globally.
fn flush_all(v: &mut Vtd) {
    v.flush_contexts();
    v.flush(Flush::Global);
}

/// One DMA of the device (a read of guest memory), which must fault for `why`.
fn expect_fault(v: &Vtd, edu: &Edu, what: &str, why: &[u8]) {
    let before = rt::interrupt_count(vtd::FAULT_VECTOR);
    edu.read_from(0x1000, 64);
    let Some((index, f)) = v.pending_fault() else {
        fail!("{}: no fault recorded", what)
    };
    if !why.contains(&f.reason) || f.source_id != edu.source_id() {
        fail!("{}: fault {:?}, want reason in {:x?}", what, f, why);
    }
    if !rt::wait_for_interrupt(vtd::FAULT_VECTOR, before, 100_000_000) {
        fail!("{}: no fault event", what);
    }
    v.clear_fault(index);
    println!("abuse: {} -> fault reason {:#x}", what, f.reason);
}

fn main() -> ! {
    let opts = Options {
        levels: 4,
        shift: 12,
        inv: Invalidation::Queued,
    };
    let Some(mut v) = Vtd::start(&opts) else {
        fail!("no DMAR table")
    };
    let Some(edu) = Edu::find() else {
        fail!("no edu device (1234:11e8)")
    };
    rt::sti();
    let devfn = edu.source_id() as u8;

    // Root table pointer outside RAM.
    v.set_root(NOT_RAM);
    flush_all(&mut v);
    v.command(gcmd::TE, true);
    expect_fault(
        &v,
        &edu,
        "root table outside RAM",
        &[reason::ROOT_TABLE_INACCESSIBLE],
    );

    // A good root table, then bad entries one at a time.
    let table = v.translated_context(devfn, DOMAIN);
    v.map(table, DOMAIN, 0x1000, 0x1000, 0x1000, 12);
    v.set_root(v.root);
    flush_all(&mut v);
    let ctx_table = v.context_table();
    let root = v.root;
    wr64(root + 8, 0xdead_0000);
    flush_all(&mut v);
    expect_fault(
        &v,
        &edu,
        "root entry with reserved bits",
        &[reason::ROOT_RESERVED],
    );
    wr64(root + 8, 0);
    wr64(root, NOT_RAM | 1);
    flush_all(&mut v);
    expect_fault(
        &v,
        &edu,
        "context table outside RAM",
        &[reason::CONTEXT_TABLE_INACCESSIBLE],
    );
    wr64(root, ctx_table | 1);

    let ctx_hi = 2 | (u64::from(DOMAIN) << 8);
    for (what, lo, hi, why) in [
        (
            "context entry with reserved bits",
            table | 1,
            ctx_hi | (1 << 40),
            reason::CONTEXT_RESERVED,
        ),
        (
            "context entry with an unsupported width",
            table | 1,
            4 | (u64::from(DOMAIN) << 8),
            reason::CONTEXT_INVALID,
        ),
        (
            "context entry with a reserved translation type",
            table | (3 << 2) | 1,
            ctx_hi,
            reason::CONTEXT_INVALID,
        ),
        (
            "page table outside RAM",
            NOT_RAM | 1,
            ctx_hi,
            reason::PAGING_ENTRY_INACCESSIBLE,
        ),
    ] {
        v.set_context_raw(devfn, lo, hi);
        flush_all(&mut v);
        expect_fault(&v, &edu, what, &[why]);
    }
    v.set_context_raw(devfn, table | 1, ctx_hi);
    // A top-level entry with a reserved address bit (above the host address width).
    let top = v.entry(table, 0x1000, 39);
    // SAFETY: the entry just created in the pool.
    let good = unsafe { core::ptr::read_volatile(top as *const u64) };
    wr64(top, good | (1 << 50));
    flush_all(&mut v);
    expect_fault(
        &v,
        &edu,
        "paging entry with reserved bits",
        &[reason::PAGING_ENTRY_RESERVED],
    );
    wr64(top, good);

    // Garbage everywhere in the root table: any spec fault will do, the VMM must not mind.
    let mut rng = Lcg(0x5eed);
    for i in 0..512 {
        wr64(root + 8 * i, rng.next());
    }
    flush_all(&mut v);
    expect_fault(
        &v,
        &edu,
        "garbage root table",
        &[
            reason::ROOT_NOT_PRESENT,
            reason::CONTEXT_INVALID,
            reason::BEYOND_WIDTH,
            reason::WRITE,
            reason::READ,
            reason::PAGING_ENTRY_INACCESSIBLE,
            reason::CONTEXT_TABLE_INACCESSIBLE,
            reason::ROOT_RESERVED,
            reason::CONTEXT_RESERVED,
            reason::PAGING_ENTRY_RESERVED,
            0x2,
        ],
    );

    queue_errors(&mut v);
    overflow(&v, &edu);
    garbage_registers(&mut v, &mut rng);

    // Back to a sane unit: translation and the queue off, records cleared; DMA at physical
    // addresses works.
    v.disable();
    v.clear_faults();
    for i in 0..LEN {
        // SAFETY: scratch RAM.
        unsafe { ((SCRATCH + i) as *mut u8).write_volatile(i as u8 ^ 0x3c) };
    }
    if !edu.read_from(SCRATCH, LEN) || !edu.write_to(SCRATCH + 4096, LEN) {
        fail!("DMA after recovery did not complete");
    }
    // SAFETY: scratch RAM, written by the device.
    let same = (0..LEN).all(|i| unsafe {
        ((SCRATCH + i) as *const u8).read_volatile()
            == ((SCRATCH + 4096 + i) as *const u8).read_volatile()
    });
    if !same || v.pending_fault().is_some() {
        fail!("DMA after recovery: data differs or faulted");
    }
    println!("abuse: recovered, translation off, DMA works");
    rt::cli();
    rt::pass()
}

const LEN: u64 = 2048;

/// Malformed queue use: each sets FSTS.IQE with IQH on the bad descriptor; once the descriptor
/// is replaced and IQE cleared, the queue runs again.
fn queue_errors(v: &mut Vtd) {
    let iqh = |v: &Vtd| v.r64(reg::IQH) >> 4;
    // A tail past the end of a 256-entry queue.
    let head = iqh(v);
    v.w32(reg::IQT, 300 << 4);
    if v.r32(reg::FSTS) & vtd::fsts::IQE == 0 || iqh(v) != head {
        fail!("IQT past the queue: no IQE, or IQH moved");
    }
    v.w32(reg::FSTS, vtd::fsts::IQE);
    v.w32(reg::IQT, (head << 4) as u32);
    v.set_tail(head);
    println!("abuse: tail past the queue -> IQE");

    let (queue, _) = v.queue();
    for (what, lo, hi) in [
        ("descriptor of reserved type 0", 0u64, 0u64),
        ("descriptor of type 7", 7, 0),
        (
            "IOTLB descriptor with reserved bits",
            2 | (1 << 4) | (1 << 8),
            0,
        ),
        ("context descriptor with granularity 0", 1, 0),
        ("wait descriptor writing outside RAM", 5 | (1 << 5), NOT_RAM),
    ] {
        let (_, bad) = v.queue();
        if v.submit(&[(lo, hi)], false) {
            fail!("{}: accepted", what);
        }
        if iqh(v) != bad {
            fail!("{}: IQH {} not on the bad descriptor {}", what, iqh(v), bad);
        }
        // Linux's recovery: the bad descriptor becomes harmless, IQE is cleared, the queue runs
        // on to the wait descriptor behind it.
        wr64(queue + 16 * bad, 2 | (1 << 4));
        wr64(queue + 16 * bad + 8, 0);
        v.w32(reg::FSTS, vtd::fsts::IQE);
        let (_, tail) = v.queue();
        v.w32(reg::IQT, (tail << 4) as u32);
        if iqh(v) != tail || v.r32(reg::FSTS) & vtd::fsts::IQE != 0 {
            fail!(
                "{}: queue did not resume (IQH {}, tail {})",
                what,
                iqh(v),
                tail
            );
        }
        println!("abuse: {} -> IQE, recovered", what);
    }
    v.flush(Flush::Global);
}

/// More faults than records: every record fills, then PFO.
fn overflow(v: &Vtd, edu: &Edu) {
    v.clear_faults();
    let records = v.fault_records();
    for _ in 0..records + 2 {
        edu.read_from(0x1000, 64);
    }
    let status = v.r32(reg::FSTS);
    if status & vtd::fsts::PFO == 0 || status & vtd::fsts::PPF == 0 {
        fail!(
            "{} faults into {} records: FSTS {:#x}",
            records + 2,
            records,
            status
        );
    }
    v.clear_faults();
    if v.r32(reg::FSTS) & (vtd::fsts::PFO | vtd::fsts::PPF) != 0 {
        fail!("PFO/PPF not cleared");
    }
    println!(
        "abuse: {} faults into {} records -> PFO",
        records + 2,
        records
    );
}

/// Random values in every register but the event ones (an MSI to a garbage address could
/// INIT this vCPU), with the queue off so the unit fetches nothing from a garbage IQA.
fn garbage_registers(v: &mut Vtd, rng: &mut Lcg) {
    v.command(gcmd::QIE, false);
    let events = [
        reg::FECTL,
        reg::FEDATA,
        reg::FEADDR,
        reg::FEUADDR,
        reg::IECTL,
        reg::IEDATA,
        reg::IEADDR,
        reg::IEUADDR,
    ];
    for _ in 0..4 {
        for off in (0..0x1000u64).step_by(4) {
            if events.contains(&off) {
                continue;
            }
            let mut value = rng.next();
            if off == reg::GCMD {
                value &= !u64::from(gcmd::QIE);
            }
            if off % 8 == 0 && value & 1 == 0 && !events.contains(&(off + 4)) {
                v.w64(off, value);
            } else {
                v.w32(off, value as u32);
            }
            let _ = v.r64(off & !7);
        }
    }
    println!("abuse: random register writes survived");
}
