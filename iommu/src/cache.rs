//! The unit's caches: a context cache by source id and an IOTLB by domain and page that keeps the
//! size of the leaf it came from. Both are bounded and evict one entry at a time (the IOTLB with
//! the clock algorithm, so recently used translations stay), never by flushing everything.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::translate::{Context, Failure, Leaf};

/// A multiply-rotate hasher for the caches' small integer keys: a few cycles where SipHash costs
/// tens of nanoseconds per lookup. It does not resist chosen collisions; a guest that crafts them
/// slows only its own devices' translations, and the maps are bounded by the caches' capacities.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // The product's high bits depend on all of the key, its low bits only on the key's low
        // bits; hashbrown picks the bucket from the low bits, so bring the high ones down (else
        // pages 2^13 apart share a bucket).
        self.0.rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// Context entries by source id.
#[derive(Debug)]
pub(crate) struct ContextCache {
    /// A context, or (with caching mode) the fault of one that is not present.
    map: KeyMap<u16, Result<Context, Failure>>,
    capacity: usize,
}

impl ContextCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: KeyMap::default(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, sid: u16) -> Option<Result<Context, Failure>> {
        self.map.get(&sid).copied()
    }

    pub fn insert(&mut self, sid: u16, ctx: Result<Context, Failure>) {
        if self.map.len() >= self.capacity
            && !self.map.contains_key(&sid)
            && let Some(victim) = self.map.keys().next().copied()
        {
            self.map.remove(&victim);
        }
        self.map.insert(sid, ctx);
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Entries of domain `did`; cached not-present entries belong to the reserved domain 0.
    pub fn invalidate_domain(&mut self, did: u16) {
        self.map
            .retain(|_, c| c.as_ref().map_or(0, |c| c.did) != did);
    }

    /// Device-selective: source ids equal to `sid` in the bits the function mask keeps (FM masks
    /// 0 to 3 of the low function-number bits, section 11.4.6).
    pub fn invalidate_device(&mut self, sid: u16, function_mask: u8) {
        let ignore = match function_mask & 3 {
            0 => 0,
            1 => 0b100,
            2 => 0b110,
            _ => 0b111,
        };
        self.map.retain(|s, _| (s & !ignore) != (sid & !ignore));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// An IOTLB key: domain, leaf size, and the IOVA's page number at that size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    did: u16,
    shift: u32,
    page: u64,
}

#[derive(Debug)]
struct Slot {
    key: Key,
    leaf: Leaf,
    referenced: AtomicBool,
}

/// Leaf translations by domain and page.
#[derive(Debug)]
pub(crate) struct Iotlb {
    slots: Vec<Option<Slot>>,
    index: KeyMap<Key, usize>,
    free: Vec<usize>,
    hand: usize,
    capacity: usize,
}

/// Leaf sizes, smallest first.
const SHIFTS: [u32; 3] = [12, 21, 30];

impl Iotlb {
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: Vec::new(),
            index: KeyMap::default(),
            free: Vec::new(),
            hand: 0,
            capacity: capacity.max(1),
        }
    }

    /// The cached leaf of domain `did` that covers `iova`.
    pub fn lookup(&self, did: u16, iova: u64) -> Option<Leaf> {
        SHIFTS.iter().find_map(|&shift| {
            let slot = self
                .slots
                .get(*self.index.get(&Key {
                    did,
                    shift,
                    page: iova >> shift,
                })?)?
                .as_ref()?;
            // Only the first hit since the clock hand passed writes, so hits on a hot entry
            // from several device threads do not bounce its cache line.
            if !slot.referenced.load(Ordering::Relaxed) {
                slot.referenced.store(true, Ordering::Relaxed);
            }
            Some(slot.leaf)
        })
    }

    pub fn insert(&mut self, did: u16, leaf: Leaf) {
        let key = Key {
            did,
            shift: leaf.shift,
            page: leaf.iova_base >> leaf.shift,
        };
        let slot = Slot {
            key,
            leaf,
            referenced: AtomicBool::new(true),
        };
        if let Some(&i) = self.index.get(&key) {
            if let Some(s) = self.slots.get_mut(i) {
                *s = Some(slot);
            }
            return;
        }
        let i = if let Some(i) = self.free.pop() {
            i
        } else if self.slots.len() < self.capacity {
            self.slots.push(None);
            self.slots.len() - 1
        } else {
            self.evict()
        };
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(slot);
            self.index.insert(key, i);
        }
    }

    /// Clock: skip (and age) referenced entries, evict the first unreferenced one.
    fn evict(&mut self) -> usize {
        let n = self.slots.len();
        for _ in 0..2 * n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            if let Some(Some(slot)) = self.slots.get(i) {
                if slot.referenced.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let key = slot.key;
                self.index.remove(&key);
                if let Some(s) = self.slots.get_mut(i) {
                    *s = None;
                }
                return i;
            }
        }
        // Every slot was referenced twice round: take the one under the hand.
        let i = self.hand % n;
        if let Some(Some(slot)) = self.slots.get(i) {
            let key = slot.key;
            self.index.remove(&key);
        }
        i
    }

    fn remove_if(&mut self, mut pred: impl FnMut(&Key) -> bool) {
        let (slots, free) = (&mut self.slots, &mut self.free);
        self.index.retain(|key, &mut i| {
            if !pred(key) {
                return true;
            }
            if let Some(s) = slots.get_mut(i) {
                *s = None;
            }
            free.push(i);
            false
        });
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.free.clear();
        self.hand = 0;
    }

    pub fn invalidate_domain(&mut self, did: u16) {
        self.remove_if(|k| k.did == did);
    }

    /// Every leaf of `did` overlapping the `1 << am` pages from `addr` (aligned down to that size).
    pub fn invalidate_pages(&mut self, did: u16, addr: u64, am: u32) {
        let span = 12 + am;
        let start = addr
            .checked_shr(span)
            .unwrap_or(0)
            .checked_shl(span)
            .unwrap_or(0);
        let end = start.saturating_add(1u64.checked_shl(span).unwrap_or(u64::MAX));
        if am <= 9 {
            // At most 512 small pages, inside one 2 MiB and one 1 GiB region: probe the keys that
            // can overlap instead of scanning the whole IOTLB.
            let small = (0..1u64 << am).map(|i| Key {
                did,
                shift: 12,
                page: (start >> 12) + i,
            });
            let large = [21, 30].map(|shift| Key {
                did,
                shift,
                page: start >> shift,
            });
            for key in small.chain(large) {
                if let Some(i) = self.index.remove(&key) {
                    if let Some(s) = self.slots.get_mut(i) {
                        *s = None;
                    }
                    self.free.push(i);
                }
            }
            return;
        }
        self.remove_if(|k| {
            let leaf_start = k.page << k.shift;
            let leaf_end = leaf_start.saturating_add(1 << k.shift);
            k.did == did && leaf_start < end && start < leaf_end
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that differ only in high page bits still land in different buckets (hashbrown takes
    /// the bucket from the hash's low bits), so a guest cannot pile its leaves into one probe
    /// sequence by spacing them 2^13 pages apart.
    #[test]
    fn keys_differing_in_high_bits_spread_over_buckets() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<KeyHasher>::default();
        let buckets: std::collections::HashSet<u64> = (0..64u64)
            .map(|i| {
                let key = Key {
                    did: 1,
                    shift: 12,
                    page: i << 13,
                };
                hasher.hash_one(key) & 0x7f
            })
            .collect();
        assert!(buckets.len() > 32, "{} of 128 buckets", buckets.len());
    }

    fn leaf(iova: u64, shift: u32) -> Leaf {
        Leaf {
            iova_base: iova,
            gpa_base: iova + 0x1000_0000,
            shift,
            read: true,
            write: true,
        }
    }

    #[test]
    fn lookup_finds_leaves_of_every_size() {
        let mut t = Iotlb::new(16);
        t.insert(1, leaf(0x1000, 12));
        t.insert(1, leaf(0x20_0000 * 3, 21));
        t.insert(2, leaf(0x4000_0000, 30));
        assert_eq!(t.lookup(1, 0x1fff).map(|l| l.shift), Some(12));
        assert_eq!(t.lookup(1, 0x60_1234).map(|l| l.shift), Some(21));
        assert_eq!(t.lookup(2, 0x7fff_ffff).map(|l| l.shift), Some(30));
        assert_eq!(t.lookup(2, 0x1000), None, "other domain");
        assert_eq!(t.lookup(1, 0x2000), None);
    }

    #[test]
    fn page_invalidation_removes_overlaps_only() {
        let mut t = Iotlb::new(64);
        for p in 0..8 {
            t.insert(1, leaf(p * 0x1000, 12));
        }
        t.insert(1, leaf(0x20_0000, 21));
        t.insert(2, leaf(0x2000, 12));
        // AM = 1: two pages from 0x2000.
        t.invalidate_pages(1, 0x2000, 1);
        assert!(t.lookup(1, 0x2000).is_none() && t.lookup(1, 0x3000).is_none());
        assert!(t.lookup(1, 0x1000).is_some() && t.lookup(1, 0x4000).is_some());
        assert!(
            t.lookup(2, 0x2000).is_some(),
            "another domain keeps its entry"
        );
        // A 4 KiB invalidation inside a 2 MiB leaf removes the leaf.
        t.invalidate_pages(1, 0x21_0000, 0);
        assert!(t.lookup(1, 0x20_0000).is_none());
        t.invalidate_domain(1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_iotlb_evicts_one_entry_and_keeps_recently_used_ones() {
        let mut t = Iotlb::new(4);
        for p in 0..4 {
            t.insert(1, leaf(p * 0x1000, 12));
        }
        // The fifth insertion ages every entry (all were just used) and evicts one.
        t.insert(1, leaf(0x10_0000, 12));
        assert_eq!(t.len(), 4, "bounded: one evicted, not all");
        // Looked at without a lookup, which would mark the entry used.
        let cached = |t: &Iotlb, iova: u64| {
            t.index.contains_key(&Key {
                did: 1,
                shift: 12,
                page: iova >> 12,
            })
        };
        let left: Vec<u64> = (0..4)
            .map(|p| p * 0x1000)
            .filter(|&iova| cached(&t, iova))
            .collect();
        assert_eq!(left.len(), 3, "{left:x?}");
        // Use each aged entry but one: the next eviction takes that one.
        let (unused, used) = left.split_last().unwrap();
        for &iova in used {
            assert!(t.lookup(1, iova).is_some());
        }
        t.insert(1, leaf(0x11_0000, 12));
        for &iova in used {
            assert!(cached(&t, iova), "the recently used {iova:#x} was evicted");
        }
        assert!(!cached(&t, *unused) && cached(&t, 0x11_0000));
        for p in 0..64 {
            t.insert(1, leaf(0x20_0000 + p * 0x1000, 12));
            assert!(t.len() <= 4);
        }
    }

    #[test]
    fn context_cache_device_invalidation_honours_the_function_mask() {
        let ctx = |did| Context {
            did,
            kind: crate::translate::ContextKind::PassThrough,
            fpd: false,
        };
        let mut c = ContextCache::new(64);
        for f in 0..8u16 {
            c.insert(0x0100 | f, Ok(ctx(1)));
        }
        c.insert(0x0200, Ok(ctx(2)));
        c.invalidate_device(0x0101, 0);
        assert!(c.get(0x0101).is_none() && c.get(0x0100).is_some());
        // FM = 2 ignores function bits 2:1: functions 0, 2, 4 and 6 match function 0.
        c.invalidate_device(0x0100, 2);
        for f in [0u16, 2, 4, 6] {
            assert!(c.get(0x0100 | f).is_none(), "function {f}");
        }
        for f in [3u16, 5, 7] {
            assert!(c.get(0x0100 | f).is_some(), "function {f}");
        }
        assert!(c.get(0x0200).is_some(), "another bus");
        c.invalidate_domain(2);
        assert!(c.get(0x0200).is_none());
        assert_eq!(c.len(), 3);
    }
}
