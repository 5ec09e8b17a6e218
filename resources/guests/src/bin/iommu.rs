//! The VT-d unit as Linux's intel_iommu drives it, with the edu device doing DMA through it:
//! DMAR table, root/context/page tables (3 or 4 levels, 4 KiB, 2 MiB or 1 GiB leaves), queued or
//! register-based invalidation, translation on. Then: DMA both ways through mapped IOVAs with a
//! checksum; an IOVA remapped to another page is seen by the device after a page-selective,
//! domain-selective and global invalidation; an unmapped IOVA faults (record and fault-event MSI)
//! and leaves memory untouched; a pass-through context; translation off.
//!
//! Command line: `levels=3|4 page=4k|2m|1g inv=qi|reg` (defaults 4, 4k, qi). `page=1g` needs
//! 3 GiB of RAM (the remapped leaves are at 1 and 2 GiB).

#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_bytes};

use guests::rt;
use guests::rt::edu::Edu;
use guests::rt::vtd::{self, Flush, Invalidation, Vtd, reason};
use guests::{fail, println};

guests::entry!(main);

/// IOVAs are guest-physical addresses plus this offset in the window.
const IOVA_BASE: u64 = 1 << 36;
/// The IOVA that is remapped between two leaves.
const REMAPPED: u64 = 1 << 37;
/// Scratch RAM for the round trip and the probes.
const SCRATCH: u64 = 0x0300_0000;
/// Bytes per round-trip transfer (QEMU's edu refuses transfers ending at its buffer's end).
const LEN: u64 = 3072;
/// Bytes per probe: within a page, and short of the buffer's end.
const PROBE: u64 = 2048;
const DOMAIN: u16 = 1;

fn fill(addr: u64, len: u64, byte: u8) {
    // SAFETY: RAM the program owns (scratch or a remap target), identity-mapped.
    unsafe { write_bytes(addr as *mut u8, byte, len as usize) }
}

fn bytes(addr: u64, len: u64) -> &'static [u8] {
    // SAFETY: as above; read after the device wrote it.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
}

fn fnv(data: &[u8]) -> u32 {
    rt::fnv(rt::FNV_INIT, data)
}

/// Every byte of `[addr, addr + len)` is `byte`.
fn all(addr: u64, len: u64, byte: u8) -> bool {
    (0..len).all(|i| {
        // SAFETY: as above.
        unsafe { read_volatile((addr + i) as *const u8) == byte }
    })
}

struct Setup {
    shift: u32,
    /// The two leaves REMAPPED points at in turn, and the offset probed in them.
    a: u64,
    b: u64,
    probe: u64,
}

/// What the device reads at `iova`: its first byte, after checking the whole page agrees.
fn probe(v: &Vtd, edu: &Edu, iova: u64) -> u8 {
    let out = SCRATCH + 0x2000;
    fill(out, 4096, 0);
    if !edu.read_from(iova, PROBE) || !edu.write_to(IOVA_BASE + out, PROBE) {
        fail!("probe DMA did not complete");
    }
    if let Some((_, f)) = v.pending_fault() {
        fail!("probe of {:#x} faulted: {:?}", iova, f);
    }
    let first = bytes(out, 1)[0];
    if !all(out, PROBE, first) {
        fail!("probe of {:#x}: mixed page", iova);
    }
    first
}

/// Expects the fault the last DMA caused, and its fault event.
fn expect_fault(v: &Vtd, edu: &Edu, events_before: u32, iova: u64, why: u8, read: bool) {
    let Some((index, f)) = v.pending_fault() else {
        fail!("no fault recorded for {:#x}", iova)
    };
    if f.address != iova & !0xfff || f.reason != why || f.read != read {
        fail!(
            "fault {:?}, want address {:#x} reason {:#x} read {}",
            f,
            iova & !0xfff,
            why,
            read
        );
    }
    if f.source_id != edu.source_id() {
        fail!(
            "fault source {:#x}, want {:#x}",
            f.source_id,
            edu.source_id()
        );
    }
    if !rt::wait_for_interrupt(vtd::FAULT_VECTOR, events_before, 100_000_000) {
        fail!("no fault event interrupt");
    }
    v.clear_fault(index);
    if v.r32(vtd::reg::FSTS) & vtd::fsts::PPF != 0 {
        fail!("PPF still set after the record was cleared");
    }
    println!(
        "fault: {} at iova {:#x} by 00:{:02x}.0 reason {:#x}, event {:#x} delivered",
        if read { "read" } else { "write" },
        iova,
        edu.dev,
        why,
        vtd::FAULT_VECTOR
    );
}

fn main() -> ! {
    let opts = vtd::Options::from_cmdline();
    let (levels, shift, inv) = (opts.levels, opts.shift, opts.inv);
    let Some(mut v) = Vtd::start(&opts) else {
        fail!("no DMAR table")
    };
    let size = 1u64 << shift;
    let a = (64u64 << 20).next_multiple_of(size);
    let s = Setup {
        shift,
        a,
        b: a + size,
        probe: size - 4096,
    };
    let Some(edu) = Edu::find() else {
        fail!("no edu device (1234:11e8)")
    };

    // Linux's order: queue on, fault events on (Vtd::start), tables, root pointer, global
    // flushes, TE.
    rt::sti();
    let devfn = edu.source_id() as u8;
    let table = v.translated_context(devfn, DOMAIN);
    let window = SCRATCH & !(size - 1);
    v.map(
        table,
        DOMAIN,
        IOVA_BASE + window,
        window,
        size.max(0x4000),
        shift,
    );
    v.map(table, DOMAIN, REMAPPED, s.a, size, shift);
    v.enable_translation();

    // Both ways through the window.
    for i in 0..LEN {
        // SAFETY: scratch RAM.
        unsafe { ((SCRATCH + i) as *mut u8).write_volatile((i * 7 + 3) as u8) };
    }
    fill(SCRATCH + 4096, LEN, 0);
    if !edu.read_from(IOVA_BASE + SCRATCH, LEN) || !edu.write_to(IOVA_BASE + SCRATCH + 4096, LEN) {
        fail!("round trip did not complete");
    }
    let (want, got) = (fnv(bytes(SCRATCH, LEN)), fnv(bytes(SCRATCH + 4096, LEN)));
    if want != got || v.pending_fault().is_some() {
        fail!("round trip: checksum {:#x}, want {:#x}", got, want);
    }
    println!(
        "dma: {} bytes both ways through iova {:#x}, checksum {:#x}",
        LEN,
        IOVA_BASE + SCRATCH,
        want
    );

    remap(&mut v, &edu, table, &s);
    if inv == Invalidation::Queued {
        let before = rt::interrupt_count(vtd::WAIT_VECTOR);
        v.submit(&[], true);
        if !rt::wait_for_interrupt(vtd::WAIT_VECTOR, before, 100_000_000) {
            fail!("no invalidation-completion interrupt");
        }
        if v.r32(vtd::reg::ICS) & 1 == 0 {
            fail!("ICS.IWC clear after a wait with IF");
        }
        v.w32(vtd::reg::ICS, 1);
        println!("wait: completion interrupt {:#x}", vtd::WAIT_VECTOR);
    }
    unmap(&mut v, &edu, table, &s);

    if levels == 3 {
        let before = rt::interrupt_count(vtd::FAULT_VECTOR);
        let beyond = 1u64 << 40;
        edu.read_from(beyond, 64);
        expect_fault(&v, &edu, before, beyond, reason::BEYOND_WIDTH, true);
    }

    // Pass-through: the device's addresses are guest-physical.
    if v.has_pt() {
        v.set_context(devfn, 0, 2, DOMAIN);
        v.flush_context(DOMAIN, edu.source_id());
        v.flush(Flush::Domain(DOMAIN));
        physical_round_trip(&v, &edu, "pass-through context");
        v.set_context(devfn, table, 0, DOMAIN);
        v.flush_context(DOMAIN, edu.source_id());
    } else {
        println!("pass-through: not offered (ECAP.PT clear)");
    }

    v.command(vtd::gcmd::TE, false);
    physical_round_trip(&v, &edu, "translation off");
    rt::cli();
    rt::pass()
}

/// The device reads the page REMAPPED points at; each kind of invalidation moves it to the new one.
fn remap(v: &mut Vtd, edu: &Edu, table: u64, s: &Setup) {
    let (a, b) = (s.a + s.probe, s.b + s.probe);
    fill(a, 4096, 0xa1);
    fill(b, 4096, 0xb2);
    let iova = REMAPPED + s.probe;
    if probe(v, edu, iova) != 0xa1 {
        fail!("the device does not see the first leaf");
    }
    let leaf = |target: u64| target | if s.shift > 12 { 1 << 7 } else { 0 } | vtd::R | vtd::W;
    let am = (s.shift - 12) as u8;
    for (what, target, flush) in [
        ("page", s.b, Flush::Page(DOMAIN, REMAPPED, am)),
        ("domain", s.a, Flush::Domain(DOMAIN)),
        ("global", s.b, Flush::Global),
    ] {
        v.set_leaf(table, REMAPPED, s.shift, leaf(target));
        v.flush(flush);
        let want = if target == s.a { 0xa1 } else { 0xb2 };
        let got = probe(v, edu, iova);
        if got != want {
            fail!(
                "after {}-selective invalidation the device reads {:#x}, want {:#x}",
                what,
                got,
                want
            );
        }
    }
    println!(
        "remap: iova {:#x} moved between {:#x} and {:#x}; seen after page, domain and global invalidation",
        iova, a, b
    );
}

/// Unmapped and invalidated, the IOVA faults both ways and memory stays as it was.
fn unmap(v: &mut Vtd, edu: &Edu, table: u64, s: &Setup) {
    let iova = REMAPPED + s.probe;
    v.set_leaf(table, REMAPPED, s.shift, 0);
    v.flush(Flush::Page(DOMAIN, REMAPPED, (s.shift - 12) as u8));
    // The buffer holds the 0xb2 page: a write that got through would show in either leaf.
    fill(s.a + s.probe, 4096, 0xa1);
    let before = rt::interrupt_count(vtd::FAULT_VECTOR);
    edu.write_to(iova, PROBE);
    expect_fault(v, edu, before, iova, reason::WRITE, false);
    if !all(s.a + s.probe, 4096, 0xa1) || !all(s.b + s.probe, 4096, 0xb2) {
        fail!("a faulting write reached memory");
    }
    let before = rt::interrupt_count(vtd::FAULT_VECTOR);
    edu.read_from(iova, PROBE);
    expect_fault(v, edu, before, iova, reason::READ, true);
    println!("unmap: memory untouched");
}

fn physical_round_trip(v: &Vtd, edu: &Edu, what: &str) {
    fill(SCRATCH + 4096, LEN, 0);
    if !edu.read_from(SCRATCH, LEN) || !edu.write_to(SCRATCH + 4096, LEN) {
        fail!("{}: DMA did not complete", what);
    }
    if fnv(bytes(SCRATCH, LEN)) != fnv(bytes(SCRATCH + 4096, LEN)) || v.pending_fault().is_some() {
        fail!("{}: round trip at physical addresses failed", what);
    }
    println!("{}: device DMA at physical addresses", what);
}
