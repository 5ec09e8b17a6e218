//! The per-device DMA handle: what a device gets when it is attached behind the unit, and uses for
//! every DMA. It implements vm-memory's `Iommu`, keeping its own IOTLB of the translations it used
//! (a range map from IOVA to guest-physical address). That cache belongs to one generation of the
//! unit's caches: when any invalidation, translation switch or new root table moves the generation,
//! the handle drops it on its next translation, so a completed invalidation is never undone by it.
//! It is a small first level in front of the unit's IOTLB (which evicts one entry at a time): a
//! translation that finds it holding [`LOCAL_CAPACITY`] mappings starts it over, so a guest that
//! maps without ever invalidating cannot make it grow without bound, while one DMA keeps every
//! mapping it needs however many leaves it spans.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use vm_memory::iommu::{Error as IommuError, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Iommu, Iotlb, Permissions};

use crate::fast::{FastCache, Hit};
use crate::spec::INTERRUPT_RANGE;
use crate::translate::Access;
use crate::unit::{HandleHits, Inner, Mapping};

/// The translations a handle has used, valid for one generation of the unit's caches.
#[derive(Debug, Default)]
pub struct Local {
    generation: u64,
    iotlb: Iotlb,
    /// Mappings inserted since the cache was last emptied.
    inserted: usize,
}

/// Mappings a handle's own cache takes before it starts over.
pub const LOCAL_CAPACITY: usize = 1024;

impl Local {
    /// Empties the cache: at a new generation, or before a translation once it is full (never
    /// during one, which must find every mapping it inserted).
    fn start_over(&mut self, generation: u64) {
        self.iotlb.invalidate_all();
        self.inserted = 0;
        self.generation = generation;
    }

    fn insert(&mut self, iova: u64, gpa: u64, len: u64, perms: Permissions) {
        self.inserted += 1;
        // vm-memory's range map holds [iova, iova + len): a span reaching the top of the address
        // space loses its last byte rather than overflow. set_mapping cannot fail otherwise; a
        // length beyond usize (no leaf is) only skips caching.
        let len = len.min(u64::MAX - iova);
        if let Ok(len) = usize::try_from(len)
            && len > 0
        {
            let _ = self
                .iotlb
                .set_mapping(GuestAddress(iova), GuestAddress(gpa), len, perms);
        }
    }
}

/// Read access to a handle's IOTLB, as `IotlbIterator` holds it.
#[derive(Debug)]
pub enum LocalGuard<'a> {
    /// The common case: a hit found under the read lock.
    Read(RwLockReadGuard<'a, Local>),
    /// After a miss: the answer is read under the write lock that filled the cache, so another
    /// thread cannot empty it in between.
    Write(RwLockWriteGuard<'a, Local>),
}

impl Deref for LocalGuard<'_> {
    type Target = Iotlb;

    fn deref(&self) -> &Iotlb {
        match self {
            LocalGuard::Read(g) => &g.iotlb,
            LocalGuard::Write(g) => &g.iotlb,
        }
    }
}

/// One device's view of DMA through the unit.
#[derive(Debug)]
pub struct DeviceHandle {
    unit: Arc<Inner>,
    sid: u16,
    local: RwLock<Local>,
    /// The native path's lock-free cache, and the lock that serialises its writers.
    fast: FastCache,
    fast_fill: Mutex<()>,
    /// Native-path lookups this handle's cache answered with a leaf, and with an untranslated
    /// span, for the unit's statistics (see `count_hit`). Hits of the vm-memory trait path's
    /// own cache are not counted (no device of the VMM uses that path).
    hits: Arc<HandleHits>,
}

/// Why a DMA through the native path failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmaFault {
    /// The address is in the interrupt range: an interrupt message, not a DMA.
    #[error("{0:#x} is in the interrupt address range")]
    InterruptRange(u64),
    /// Translation failed; the fault was recorded (unless the context's FPD suppresses it).
    #[error("DMA remapping fault {reason:?} at {iova:#x}")]
    Remapping {
        /// The faulting address.
        iova: u64,
        /// The spec's fault reason.
        reason: crate::spec::FaultReason,
    },
}

/// Counts a hit of a handle's cache without a locked instruction on the hot path: a handle is
/// normally used by one thread at a time (its device's), and a hit lost to two threads counting at
/// once only makes the statistics a little low.
fn count_hit(hits: &AtomicU64) {
    hits.store(
        hits.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// Identity mappings are cached in spans of this size (aligned), so untranslated DMA costs one
/// lookup per gigabyte rather than per page.
const IDENTITY_SPAN_SHIFT: u32 = 30;

/// The address of `iova` within `hit`, and the bytes left in the leaf from there.
fn resolve(hit: Hit, iova: u64) -> (u64, u64) {
    let offset = iova - hit.iova_base;
    (hit.gpa_base + offset, (1u64 << hit.shift) - offset)
}

impl From<Permissions> for Access {
    fn from(p: Permissions) -> Self {
        Access {
            read: matches!(p, Permissions::Read | Permissions::ReadWrite),
            write: matches!(p, Permissions::Write | Permissions::ReadWrite),
        }
    }
}

fn permissions(read: bool, write: bool) -> Permissions {
    match (read, write) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

impl DeviceHandle {
    pub(crate) fn new(unit: Arc<Inner>, sid: u16) -> Self {
        let local = Local {
            generation: unit.generation(),
            iotlb: Iotlb::new(),
            inserted: 0,
        };
        Self {
            hits: unit.hit_counters(),
            unit,
            sid,
            local: RwLock::new(local),
            fast: FastCache::new(),
            fast_fill: Mutex::new(()),
        }
    }

    /// Mappings in this handle's own cache (for tests of its bound).
    #[cfg(test)]
    pub(crate) fn cached_mappings(&self) -> usize {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .inserted
    }

    /// The native translation path: the guest-physical address of `iova` and how many bytes from
    /// it (at least one) stay within the same leaf, so a device moves `min(len, that)` bytes, then
    /// translates the next address. A hit costs a few atomic loads; a miss goes through the unit's caches and
    /// tables, and a failure records the fault.
    pub fn translate_one(&self, iova: u64, access: Access) -> Result<(u64, u64), DmaFault> {
        if INTERRUPT_RANGE.contains(&iova) {
            return Err(DmaFault::InterruptRange(iova));
        }
        let generation = self.unit.generation();
        // A cached entry without the access right goes back to the unit, which faults or finds
        // that the guest has granted it since.
        let hit = match self.fast.lookup(iova, generation) {
            Some(hit) if (hit.read || !access.read) && (hit.write || !access.write) => {
                count_hit(if hit.identity {
                    &self.hits.untranslated
                } else {
                    &self.hits.leaf
                });
                hit
            }
            _ => self.fill(iova, access, generation)?,
        };
        let (gpa, avail) = resolve(hit, iova);
        // A leaf or identity span may cover the interrupt range; the DMA must stop before it.
        let to_interrupts = INTERRUPT_RANGE.start().saturating_sub(iova);
        Ok((
            gpa,
            if iova < *INTERRUPT_RANGE.start() {
                avail.min(to_interrupts)
            } else {
                avail
            },
        ))
    }

    fn fill(&self, iova: u64, access: Access, generation: u64) -> Result<Hit, DmaFault> {
        let hit = match self.unit.translate_page(self.sid, iova, access, generation) {
            Ok(Mapping::Identity) => {
                let base = iova >> IDENTITY_SPAN_SHIFT << IDENTITY_SPAN_SHIFT;
                Hit {
                    iova_base: base,
                    gpa_base: base,
                    shift: IDENTITY_SPAN_SHIFT,
                    read: true,
                    write: true,
                    identity: true,
                }
            }
            Ok(Mapping::Leaf(l)) => Hit {
                iova_base: l.iova_base,
                gpa_base: l.gpa_base,
                shift: l.shift,
                read: l.read,
                write: l.write,
                identity: false,
            },
            Err(failure) => {
                self.unit.report_fault(self.sid, iova, access, failure);
                return Err(DmaFault::Remapping {
                    iova,
                    reason: failure.reason,
                });
            }
        };
        let _writer = self
            .fast_fill
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.fast.insert(iova, hit, generation);
        Ok(hit)
    }

    /// The requester id this handle translates for.
    pub fn requester_id(&self) -> u16 {
        self.sid
    }

    fn fail(iova: u64, length: usize, reason: String) -> IommuError {
        IommuError::CannotResolve {
            iova_range: IovaRange {
                base: GuestAddress(iova),
                length,
            },
            reason,
        }
    }

    /// Resolves `[start, end)` page by page through the unit into the local IOTLB. On a fault, the
    /// fault is recorded and the error returned.
    fn resolve(
        &self,
        local: &mut Local,
        start: u64,
        end: u64,
        access: Access,
        generation: u64,
    ) -> Result<(), IommuError> {
        let mut at = start;
        while at < end {
            match self.unit.translate_page(self.sid, at, access, generation) {
                Ok(Mapping::Identity) => {
                    let base = at >> IDENTITY_SPAN_SHIFT << IDENTITY_SPAN_SHIFT;
                    let len = 1u64 << IDENTITY_SPAN_SHIFT;
                    local.insert(base, base, len, Permissions::ReadWrite);
                    at = base.saturating_add(len);
                }
                Ok(Mapping::Leaf(leaf)) => {
                    let len = 1u64 << leaf.shift;
                    local.insert(
                        leaf.iova_base,
                        leaf.gpa_base,
                        len,
                        permissions(leaf.read, leaf.write),
                    );
                    at = leaf.iova_base.saturating_add(len);
                }
                Err(failure) => {
                    self.unit.report_fault(self.sid, at, access, failure);
                    return Err(Self::fail(
                        at,
                        1,
                        format!("DMA remapping fault {:?}", failure.reason),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Iommu for DeviceHandle {
    type IotlbGuard<'a> = LocalGuard<'a>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<LocalGuard<'_>>, IommuError> {
        let start = iova.0;
        let end = start
            .checked_add(length as u64)
            .ok_or_else(|| Self::fail(start, length, "range wraps around".into()))?;
        // Requests to the interrupt range are interrupt messages, never translated DMA.
        if length > 0 && start <= *INTERRUPT_RANGE.end() && *INTERRUPT_RANGE.start() < end {
            return Err(Self::fail(start, length, "interrupt address range".into()));
        }
        let generation = self.unit.generation();
        {
            let local = self.local.read().unwrap_or_else(PoisonError::into_inner);
            if local.generation == generation
                && let Ok(found) = Iotlb::lookup(LocalGuard::Read(local), iova, length, access)
            {
                return Ok(found);
            }
        }
        let mut local = self.local.write().unwrap_or_else(PoisonError::into_inner);
        if local.generation != generation || local.inserted >= LOCAL_CAPACITY {
            local.start_over(generation);
        }
        self.resolve(
            &mut local,
            start & !0xfff,
            end,
            Access::from(access),
            generation,
        )?;
        Iotlb::lookup(LocalGuard::Write(local), iova, length, access)
            .map_err(|fails| Self::fail(start, length, format!("not mapped: {fails:?}")))
    }
}
