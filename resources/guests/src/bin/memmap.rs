//! Checks the multiboot memory map and touches all of RAM it describes.

#![no_std]
#![no_main]

use guests::rt::multiboot::{self, MEMORY_AVAILABLE, MemoryRegion};
use guests::rt::{self, sys};
use guests::{fail, println};

guests::entry!(main);

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Distance between probes inside a region.
const STRIDE: u64 = 64 * MIB;
/// Excluded ranges: below 1 MiB, the image, up to 16 modules.
const MAX_EXCLUDED: usize = 2 + multiboot::MAX_MODULES;
const MAX_PIECES: usize = MAX_EXCLUDED + 1;

fn main() -> ! {
    let map = multiboot::memory_map();
    if map.is_empty() {
        fail!(
            "no memory map from the loader (flags {:#x})",
            multiboot::flags()
        );
    }
    if multiboot::memory_map_truncated() {
        fail!("memory map has more than {} entries", multiboot::MAX_MMAP);
    }
    for e in map {
        println!(
            "mmap: base={:#x} len={:#x} type={}",
            e.base, e.length, e.kind
        );
    }
    for w in map.windows(2) {
        if w[0].base > w[1].base {
            fail!(
                "memory map not sorted: {:#x} before {:#x}",
                w[0].base,
                w[1].base
            );
        }
        if w[0].end() > w[1].base {
            fail!(
                "memory map entries overlap: [{:#x}, {:#x}) and [{:#x}, {:#x})",
                w[0].base,
                w[0].end(),
                w[1].base,
                w[1].end()
            );
        }
    }
    if let Some(e) = map.iter().find(|e| e.base.checked_add(e.length).is_none()) {
        fail!("memory map entry at {:#x} wraps around", e.base);
    }

    check_mem_lower_upper(map);

    let ram: u64 = map
        .iter()
        .filter(|e| e.kind == MEMORY_AVAILABLE)
        .map(|e| e.length)
        .sum();
    let ram_top = map
        .iter()
        .filter(|e| e.kind == MEMORY_AVAILABLE)
        .map(|e| e.end())
        .max()
        .unwrap_or(0);
    if let Some(v) = rt::cmdline_value("ram_mib") {
        let Ok(n) = v.parse::<u64>() else {
            fail!("bad ram_mib= value {:?}", v)
        };
        if ram > n * MIB || ram + 4 * MIB < n * MIB {
            fail!(
                "type-1 regions add up to {:#x} bytes ({} KiB), expected {} MiB minus at most 4 MiB",
                ram,
                ram / KIB,
                n
            );
        }
        if n > 3072 && ram_top <= 4 * GIB {
            fail!("ram_mib={} but no RAM above 4 GiB in the memory map", n);
        }
        println!("ram: {} KiB available, ram_mib={}", ram / KIB, n);
    }

    if let Err(e) = rt::map_identity_above_4g(ram_top) {
        fail!("cannot map RAM up to {:#x}: {:?}", ram_top, e);
    }

    // Everything the program must not overwrite.
    let mut excluded = [(0u64, 0u64); MAX_EXCLUDED];
    let mut n_excluded = 0;
    excluded[n_excluded] = (0, MIB);
    n_excluded += 1;
    excluded[n_excluded] = sys::image_range();
    n_excluded += 1;
    for m in multiboot::modules() {
        excluded[n_excluded] = (
            m.start as u64 & !0xfff,
            (m.end as u64).next_multiple_of(0x1000),
        );
        n_excluded += 1;
    }
    let excluded = &excluded[..n_excluded];

    // Write every probe first, then read them all back, so that two
    // addresses backed by the same memory are caught too.
    let mut probes = 0u64;
    for_each_probe(map, excluded, |addr| {
        // SAFETY: addr is available RAM outside the image and modules, mapped above.
        unsafe { rt::mmio_write64(addr, pattern(addr)) };
        probes += 1;
    });
    for_each_probe(map, excluded, |addr| {
        // SAFETY: as above.
        let got = unsafe { rt::mmio_read64(addr) };
        if got != pattern(addr) {
            fail!(
                "RAM at {:#x}: wrote {:#018x}, read back {:#018x}",
                addr,
                pattern(addr),
                got
            );
        }
    });
    println!("ram: {} MiB checked", ram / MIB);
    println!("({} probes, RAM top {:#x})", probes, ram_top);
    rt::pass()
}

/// A different 64-bit value for every address (odd multiplier: bijective).
fn pattern(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a_a5a5_0f0f_f0f0
}

fn check_mem_lower_upper(map: &[MemoryRegion]) {
    let (Some(lower), Some(upper)) = (multiboot::mem_lower(), multiboot::mem_upper()) else {
        fail!(
            "loader gave no mem_lower/mem_upper (flags {:#x})",
            multiboot::flags()
        );
    };
    println!("mem_lower={} KiB mem_upper={} KiB", lower, upper);
    // mem_lower: the available RAM starting at 0, in KiB.
    let low_end =
        contiguous_ram_end(map, 0).unwrap_or_else(|| fail!("no available RAM at address 0"));
    if lower as u64 != low_end / KIB || lower > 640 {
        fail!(
            "mem_lower is {} KiB but the memory map has {} KiB of RAM at 0",
            lower,
            low_end / KIB
        );
    }
    // mem_upper: the available RAM from 1 MiB up to the first hole, in KiB.
    let up_end = contiguous_ram_end(map, MIB).unwrap_or_else(|| fail!("no available RAM at 1 MiB"));
    if upper as u64 != (up_end - MIB) / KIB {
        fail!(
            "mem_upper is {} KiB but the memory map has {} KiB of RAM from 1 MiB",
            upper,
            (up_end - MIB) / KIB
        );
    }
}

/// End of the run of available RAM that contains `addr`.
fn contiguous_ram_end(map: &[MemoryRegion], addr: u64) -> Option<u64> {
    let mut end = map
        .iter()
        .find(|e| e.kind == MEMORY_AVAILABLE && e.base <= addr && addr < e.end())?
        .end();
    while let Some(e) = map
        .iter()
        .find(|e| e.kind == MEMORY_AVAILABLE && e.base == end && e.length > 0)
    {
        end = e.end();
    }
    Some(end)
}

/// Calls `f` for every probe address: first and last 8 bytes of every
/// piece of available RAM outside `excluded`, and every [`STRIDE`] bytes
/// in between.
fn for_each_probe(map: &[MemoryRegion], excluded: &[(u64, u64)], mut f: impl FnMut(u64)) {
    for r in map.iter().filter(|e| e.kind == MEMORY_AVAILABLE) {
        let mut pieces = [(0u64, 0u64); MAX_PIECES];
        pieces[0] = (r.base, r.end());
        let mut n = 1;
        for &(xs, xe) in excluded {
            let mut out = [(0u64, 0u64); MAX_PIECES];
            let mut m = 0;
            for &(s, e) in &pieces[..n] {
                if xe <= s || xs >= e {
                    out[m] = (s, e);
                    m += 1;
                    continue;
                }
                if s < xs {
                    out[m] = (s, xs);
                    m += 1;
                }
                if xe < e {
                    out[m] = (xe, e);
                    m += 1;
                }
            }
            pieces = out;
            n = m;
        }
        for &(s, e) in &pieces[..n] {
            let first = s.next_multiple_of(8);
            let last = (e & !7).saturating_sub(8);
            if e < 16 || first > last {
                continue;
            }
            let mut a = first;
            while a < last {
                f(a);
                a += STRIDE;
            }
            f(last);
        }
    }
}
