//! Benchmark: the edu device's DMA through the VT-d unit, 4 KiB per operation, in a timed loop
//! (rt::bench). Operations alternate: even ones copy a source page into the device's buffer, odd
//! ones copy the buffer out to a destination page, so after the loop the destination must hold
//! the source's pattern.
//!
//! - `mode=fixed`: both pages mapped once before translation is on; every DMA hits the IOTLB.
//! - `mode=strict`: Linux's `iommu.strict=1` pattern around every operation: the page is mapped
//!   (plus a page-selective invalidation under caching mode, as Linux does), the DMA runs (and
//!   walks the tables), then the page is unmapped and invalidated page-selectively, waiting for
//!   completion. The map and unmap work is the loop's timed part.
//!
//! Runs on any VMM with QEMU's edu interface and a VT-d unit: ours, or QEMU with `-device
//! intel-iommu -device edu` (whose edu completes a transfer about 100 ms after it is started).
//!
//! Command line: `mode=fixed|strict levels=3|4 inv=qi|reg` and rt::bench's `seconds=S` or
//! `ops=N`.

#![no_std]
#![no_main]

use core::ptr::write_bytes;

use guests::rt::bench::Loop;
use guests::rt::edu::Edu;
use guests::rt::vtd::{self, Flush, Vtd};
use guests::rt::{self, cmdline_value};
use guests::{fail, println};

guests::entry!(main);

/// The source's and destination's IOVAs: below QEMU edu's default 28-bit DMA mask.
const IOVA: u64 = 0x0ff0_0000;
/// The source and destination pages.
const SOURCE: u64 = 0x0300_0000;
const DEST: u64 = SOURCE + 0x1000;
const PAGE: u64 = 4096;
const DOMAIN: u16 = 1;

fn page(addr: u64) -> &'static mut [u8] {
    // SAFETY: scratch RAM the program owns, identity-mapped; the device writes it only during a
    // DMA the program waits for.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, PAGE as usize) }
}

fn main() -> ! {
    let opts = vtd::Options::from_cmdline();
    let strict = match cmdline_value("mode") {
        None | Some("fixed") => false,
        Some("strict") => true,
        Some(v) => fail!("mode={}: expected fixed or strict", v),
    };
    if opts.shift != 12 {
        fail!("dma_loop maps 4 KiB pages only (page=4k)");
    }
    let Some(mut v) = Vtd::start(&opts) else {
        fail!("no DMAR table")
    };
    let Some(edu) = Edu::find() else {
        fail!("no edu device (1234:11e8)")
    };
    for (i, b) in page(SOURCE).iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    // SAFETY: as in `page`.
    unsafe { write_bytes(DEST as *mut u8, 0, PAGE as usize) };

    let table = v.translated_context(edu.source_id() as u8, DOMAIN);
    if !strict {
        v.map(table, DOMAIN, IOVA, SOURCE, 2 * PAGE, 12);
    }
    v.enable_translation();
    println!(
        "dma_loop: edu 00:{:02x}.0, {} mappings, iova {:#x}",
        edu.dev,
        if strict { "per-operation" } else { "fixed" },
        IOVA
    );

    let mut l = Loop::start(if strict { "dma-strict" } else { "dma-fixed" });
    while l.next_op() {
        let to_device = l.ops() % 2 == 1;
        let (iova, gpa) = if to_device {
            (IOVA, SOURCE)
        } else {
            (IOVA + PAGE, DEST)
        };
        if strict {
            l.time(|| v.map(table, DOMAIN, iova, gpa, PAGE, 12));
        }
        let done = if to_device {
            edu.read_from(iova, PAGE)
        } else {
            edu.write_to(iova, PAGE)
        };
        if !done {
            fail!("DMA {} did not complete", l.ops());
        }
        if strict {
            l.time(|| {
                v.set_leaf(table, iova, 12, 0);
                v.flush(Flush::Page(DOMAIN, iova, 0));
            });
        }
    }
    let ops = l.end();

    if let Some((_, f)) = v.pending_fault() {
        fail!("a DMA faulted: {:?}", f);
    }
    if ops >= 2 && page(DEST) != page(SOURCE) {
        fail!("the destination page does not hold the source's pattern");
    }
    rt::pass()
}
