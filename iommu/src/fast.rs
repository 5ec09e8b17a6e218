//! A device handle's lock-free first-level cache for its native translation path: a small
//! direct-mapped array of leaf translations, each guarded by a sequence counter (a seqlock built of
//! atomics only) and tagged with the unit's generation, so a hit is a handful of loads and a stale
//! entry can never hit after an invalidation has moved the generation.

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// Entries in the cache (a power of two): 2 MiB of 4 KiB pages, 16 KiB per device.
pub(crate) const ENTRIES: usize = 512;

/// What a hit yields: the leaf's IOVA base, guest-physical base, size shift and permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub iova_base: u64,
    pub gpa_base: u64,
    pub shift: u32,
    pub read: bool,
    pub write: bool,
    /// Untranslated (translation off or a pass-through context), not a leaf.
    pub identity: bool,
}

/// One entry: `seq` is odd while a writer changes the other fields.
#[derive(Debug, Default)]
struct Entry {
    seq: AtomicU64,
    generation: AtomicU64,
    /// IOVA base | shift (bits 11:6) | identity (bit 3) | valid (bit 2) | write (bit 1) | read
    /// (bit 0).
    tag: AtomicU64,
    gpa_base: AtomicU64,
}

const VALID: u64 = 1 << 2;
const IDENTITY: u64 = 1 << 3;

/// The cache. Readers take no lock; writers must be serialised by the caller.
#[derive(Debug)]
pub(crate) struct FastCache {
    entries: Vec<Entry>,
}

impl FastCache {
    pub fn new() -> Self {
        Self {
            entries: (0..ENTRIES).map(|_| Entry::default()).collect(),
        }
    }

    /// Leaves of any size share one slot per 4 KiB page number; a 2 MiB leaf fills the slot of the
    /// page that was translated. Consecutive pages of a 2 MiB block take consecutive slots, and
    /// each higher 9-bit group of the page number moves the block by its own odd stride, so
    /// pages 2 MiB, 1 GiB or 512 GiB apart (as a driver's rings, headers and buffers often are)
    /// do not evict each other.
    fn slot(&self, iova: u64) -> Option<&Entry> {
        let page = iova >> 12;
        let index = page
            .wrapping_add((page >> 9).wrapping_mul(37))
            .wrapping_add((page >> 18).wrapping_mul(101))
            .wrapping_add((page >> 27).wrapping_mul(199));
        self.entries.get(index as usize % ENTRIES)
    }

    /// The cached leaf covering `iova`, if it belongs to `generation`.
    pub fn lookup(&self, iova: u64, generation: u64) -> Option<Hit> {
        let e = self.slot(iova)?;
        let s1 = e.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return None;
        }
        let g = e.generation.load(Ordering::Relaxed);
        let tag = e.tag.load(Ordering::Relaxed);
        let gpa_base = e.gpa_base.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if e.seq.load(Ordering::Relaxed) != s1 || g != generation || tag & VALID == 0 {
            return None;
        }
        let shift = ((tag >> 6) & 0x3f) as u32;
        let iova_base = tag & !0xfff;
        if iova >> shift != iova_base >> shift {
            return None;
        }
        Some(Hit {
            iova_base,
            gpa_base,
            shift,
            read: tag & 1 != 0,
            write: tag & 2 != 0,
            identity: tag & IDENTITY != 0,
        })
    }

    /// Fills the slot of `iova` (callers serialise writers).
    pub fn insert(&self, iova: u64, hit: Hit, generation: u64) {
        let Some(e) = self.slot(iova) else { return };
        let tag = (hit.iova_base & !0xfff)
            | (u64::from(hit.shift) << 6)
            | VALID
            | if hit.identity { IDENTITY } else { 0 }
            | u64::from(hit.read)
            | (u64::from(hit.write) << 1);
        // Seqlock write: odd sequence, a release fence so the data stores cannot be seen before it,
        // the data, then the even sequence with release.
        let seq = e.seq.load(Ordering::Relaxed);
        e.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        e.generation.store(generation, Ordering::Relaxed);
        e.tag.store(tag, Ordering::Relaxed);
        e.gpa_base.store(hit.gpa_base, Ordering::Relaxed);
        e.seq.store(seq.wrapping_add(2), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_only_within_the_leaf_and_its_generation() {
        let c = FastCache::new();
        let hit = Hit {
            iova_base: 0x20_0000,
            gpa_base: 0x80_0000,
            shift: 21,
            read: true,
            write: false,
            identity: false,
        };
        c.insert(0x20_3000, hit, 5);
        assert_eq!(c.lookup(0x20_3abc, 5), Some(hit));
        assert_eq!(c.lookup(0x20_3abc, 6), None, "another generation");
        // Another page in the same slot: a different leaf base.
        let same_slot = (0..1u64 << 20)
            .map(|p| p << 12)
            .find(|&a| {
                a >> 21 != 0x20_3000 >> 21
                    && c.slot(a).map(|e| e as *const Entry)
                        == c.slot(0x20_3000).map(|e| e as *const Entry)
            })
            .unwrap();
        assert_eq!(c.lookup(same_slot, 5), None);
    }

    /// The virtio-blk benchmark's pages: three ring pages, the header and status pages, and 16
    /// data pages, each in a slot of its own.
    #[test]
    fn a_drivers_rings_header_and_buffers_do_not_collide() {
        let c = FastCache::new();
        let mut pages: Vec<u64> = vec![0x10_0000, 0x10_1000, 0x10_2000, 0x20_0000, 0x20_1000];
        pages.extend((0..16).map(|p| 0x40_0000 + p * 0x1000));
        let mut slots: Vec<*const Entry> = pages
            .iter()
            .map(|&a| c.slot(a).unwrap() as *const Entry)
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), pages.len());
    }

    #[test]
    fn pages_2m_and_1g_apart_take_different_slots() {
        let c = FastCache::new();
        let slot = |a: u64| c.slot(a).map(|e| e as *const Entry);
        for base in [0u64, 0x10_0000, 0x7654_3000] {
            for stride in [1u64 << 21, 1 << 30, 1 << 39] {
                assert_ne!(slot(base), slot(base + stride), "{base:#x} + {stride:#x}");
            }
        }
    }
}
