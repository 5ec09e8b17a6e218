//! The unit's shared state, translation through its caches, and fault recording.
//!
//! Locks: `regs` (the register file, taken by MMIO and to record faults), then at most one of
//! `contexts` and `iotlb` at a time. Translation takes only the cache locks, and records faults after
//! releasing them; MSIs are sent after `regs` is released, so an MSI sender may call back freely.
//!
//! Exact invalidation: every invalidation changes the caches under their write lock and then bumps
//! `generation`. A translation notes the generation before it looks anything up and inserts what
//! it walked only if the generation is unchanged, so a walk that raced with an invalidation never
//! re-inserts what the invalidation removed. Device handles drop their own cached translations when
//! the generation moves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak,
};

use crate::Memory;
use crate::cache::{ContextCache, Iotlb};
use crate::config::{Config, ConfigError};
use crate::handle::DeviceHandle;
use crate::intremap::{InterruptCacheListener, IrState};
use crate::regs::Regs;
use crate::spec::{FaultReason, granularity};
pub(crate) use crate::translate::Failure;
use crate::translate::{self, Access, Context, ContextKind, Leaf, WalkEnd};

/// An interrupt message: the address and data a device (here, the unit) writes to signal an MSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (FEUADDR:FEADDR or IEUADDR:IEADDR).
    pub address: u64,
    /// Data (FEDATA or IEDATA).
    pub data: u32,
}

/// Delivers the unit's fault-event and invalidation-event interrupts; the VMM implements it.
pub trait MsiSender: Send + Sync {
    /// Sends `msg`. Called without any of the unit's locks held.
    fn send(&self, msg: MsiMessage);
}

/// Counters for the VMM's statistics line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pages translated for devices (cache hits and walks), through the unit.
    pub translations: AtomicU64,
    /// IOTLB hits.
    pub iotlb_hits: AtomicU64,
    /// IOTLB misses.
    pub iotlb_misses: AtomicU64,
    /// Second-level page walks.
    pub walks: AtomicU64,
    /// Context-cache invalidations.
    pub inv_context: AtomicU64,
    /// Global IOTLB invalidations.
    pub inv_global: AtomicU64,
    /// Domain-selective IOTLB invalidations.
    pub inv_domain: AtomicU64,
    /// Page-selective IOTLB invalidations.
    pub inv_page: AtomicU64,
    /// Invalidation wait descriptors.
    pub inv_wait: AtomicU64,
    /// Interrupt entry cache invalidations.
    pub inv_iec: AtomicU64,
    /// Faults detected (recorded or not), interrupt-remapping faults included.
    pub faults: AtomicU64,
}

/// The unit's counters at one moment, with the hits of the devices' own caches folded in: a
/// lookup answered by a device handle's cache counts as a translation, and as an IOTLB hit when
/// it found a leaf (not an untranslated span: translation off or pass-through).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Lookups for devices' DMA, each covering up to one leaf (or untranslated span) of an access.
    pub translations: u64,
    /// Translations answered from a cache (the unit's IOTLB or a device handle's).
    pub iotlb_hits: u64,
    /// Translations of translated contexts that the unit's IOTLB could not answer.
    pub iotlb_misses: u64,
    /// Second-level page walks.
    pub walks: u64,
    /// Context-cache invalidations.
    pub inv_context: u64,
    /// Global IOTLB invalidations.
    pub inv_global: u64,
    /// Domain-selective IOTLB invalidations.
    pub inv_domain: u64,
    /// Page-selective IOTLB invalidations.
    pub inv_page: u64,
    /// Invalidation wait descriptors.
    pub inv_wait: u64,
    /// Interrupt entry cache invalidations.
    pub inv_iec: u64,
    /// Faults detected (recorded or not), interrupt-remapping faults included.
    pub faults: u64,
}

/// One line: `translations 10, iotlb hits 8, misses 2, walks 2, invalidations: context 1,
/// global 1, domain 0, page 3, wait 4, iec 1, faults 1`.
impl std::fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "translations {}, iotlb hits {}, misses {}, walks {}, invalidations: context {}, \
             global {}, domain {}, page {}, wait {}, iec {}, faults {}",
            self.translations,
            self.iotlb_hits,
            self.iotlb_misses,
            self.walks,
            self.inv_context,
            self.inv_global,
            self.inv_domain,
            self.inv_page,
            self.inv_wait,
            self.inv_iec,
            self.faults,
        )
    }
}

/// Lookups a device handle's own cache answered: with a leaf, or with an untranslated span
/// (translation off, pass-through).
#[derive(Debug, Default)]
pub(crate) struct HandleHits {
    pub leaf: AtomicU64,
    pub untranslated: AtomicU64,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// What a page of a device's address space maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Untranslated: translation is off, or the context is pass-through.
    Identity,
    /// A second-level leaf.
    Leaf(Leaf),
}

/// The state shared by the unit and every device handle.
pub(crate) struct Inner {
    pub config: Config,
    pub cap: u64,
    pub ecap: u64,
    pub mem: Arc<Memory>,
    msi: Arc<dyn MsiSender>,
    pub regs: Mutex<Regs>,
    /// GSTS.TES, readable without the register lock.
    pub te: AtomicBool,
    /// The root table pointer latched by the last SRTP.
    pub root_table: AtomicU64,
    pub generation: AtomicU64,
    /// Interrupt remapping as the registers last set it.
    pub ir: RwLock<IrState>,
    /// Who caches interrupt translations.
    pub ir_listener: OnceLock<Weak<dyn InterruptCacheListener>>,
    contexts: RwLock<ContextCache>,
    iotlb: RwLock<Iotlb>,
    pub stats: Stats,
    /// Each attached handle's counts of the lookups its own cache answered.
    handle_hits: Mutex<Vec<Arc<HandleHits>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemappingUnit")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Inner {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// New counters of a device handle's cache hits, summed into the statistics.
    pub fn hit_counters(&self) -> Arc<HandleHits> {
        let counters = Arc::new(HandleHits::default());
        lock(&self.handle_hits).push(counters.clone());
        counters
    }

    pub fn send(&self, msgs: Vec<MsiMessage>) {
        for m in msgs {
            self.msi.send(m);
        }
    }

    /// The context of `sid`, from the cache or the tables. With caching mode, a context that is
    /// not present is cached too (as hardware may, under the reserved domain id 0), so only the
    /// guest's context invalidation makes a new one visible.
    fn context(&self, sid: u16, generation: u64) -> Result<Context, Failure> {
        if let Some(c) = read(&self.contexts).get(sid) {
            return c;
        }
        let root = self.root_table.load(Ordering::SeqCst);
        let ctx = translate::lookup_context(&self.mem, &self.config, root, sid);
        let not_present = matches!(&ctx, Err(f) if matches!(f.reason, FaultReason::RootNotPresent | FaultReason::ContextNotPresent));
        if ctx.is_ok() || (not_present && self.config.caching_mode) {
            let mut cache = write(&self.contexts);
            if self.generation() == generation {
                cache.insert(sid, ctx);
            }
        }
        ctx
    }

    /// Translates the page of `iova` for device `sid`. `generation` is the generation the caller
    /// noted before starting.
    pub fn translate_page(
        &self,
        sid: u16,
        iova: u64,
        access: Access,
        generation: u64,
    ) -> Result<Mapping, Failure> {
        count(&self.stats.translations);
        if !self.te.load(Ordering::SeqCst) {
            return Ok(Mapping::Identity);
        }
        let ctx = self.context(sid, generation)?;
        let fail = |reason| Failure {
            reason,
            fpd: ctx.fpd,
        };
        let ContextKind::Translated { table, levels } = ctx.kind else {
            return Ok(Mapping::Identity);
        };
        if let Some(leaf) = read(&self.iotlb).lookup(ctx.did, iova) {
            count(&self.stats.iotlb_hits);
            return if leaf.allows(access) {
                Ok(Mapping::Leaf(leaf))
            } else {
                Err(fail(access.denied()))
            };
        }
        count(&self.stats.iotlb_misses);
        count(&self.stats.walks);
        let (leaf, end) =
            translate::walk(&self.mem, &self.config, table, levels, iova, access).map_err(fail)?;
        // Present translations are cached; not-present ones only with caching mode, where the
        // guest must invalidate after making them present.
        let cacheable = match end {
            WalkEnd::Complete => true,
            WalkEnd::NotPresent => self.config.caching_mode,
            WalkEnd::Denied => false,
        };
        if cacheable {
            let mut iotlb = write(&self.iotlb);
            if self.generation() == generation {
                iotlb.insert(ctx.did, leaf);
            }
        }
        if leaf.allows(access) {
            Ok(Mapping::Leaf(leaf))
        } else {
            Err(fail(access.denied()))
        }
    }

    /// Records a translation fault of `sid` at `iova` (unless its context disables that), and
    /// raises the fault event.
    pub fn report_fault(&self, sid: u16, iova: u64, access: Access, failure: Failure) {
        count(&self.stats.faults);
        if failure.fpd && failure.reason.qualified() {
            return;
        }
        log::debug!(
            "DMA fault: device {sid:#06x} at {iova:#x}: {:?}",
            failure.reason
        );
        let msgs = lock(&self.regs).record_fault(sid, iova, failure.reason, !access.write);
        self.send(msgs);
    }

    /// Context-cache invalidation; returns the granularity performed.
    pub fn invalidate_context(&self, gran: u64, did: u16, sid: u16, function_mask: u8) -> u64 {
        count(&self.stats.inv_context);
        let mut cache = write(&self.contexts);
        match gran {
            granularity::DOMAIN => cache.invalidate_domain(did),
            granularity::DEVICE_OR_PAGE => cache.invalidate_device(sid, function_mask),
            _ => cache.clear(),
        }
        self.bump();
        gran
    }

    /// IOTLB invalidation; returns the granularity performed (a page-selective request beyond the
    /// unit's PSI support is done domain-wide, as the spec allows).
    pub fn invalidate_iotlb(&self, gran: u64, did: u16, addr: u64, am: u32) -> u64 {
        let mut iotlb = write(&self.iotlb);
        let done = match gran {
            granularity::DOMAIN => {
                iotlb.invalidate_domain(did);
                count(&self.stats.inv_domain);
                granularity::DOMAIN
            }
            granularity::DEVICE_OR_PAGE
                if self.config.page_selective && am <= u32::from(self.config.max_address_mask) =>
            {
                iotlb.invalidate_pages(did, addr, am);
                count(&self.stats.inv_page);
                granularity::DEVICE_OR_PAGE
            }
            granularity::DEVICE_OR_PAGE => {
                iotlb.invalidate_domain(did);
                count(&self.stats.inv_domain);
                granularity::DOMAIN
            }
            _ => {
                iotlb.clear();
                count(&self.stats.inv_global);
                granularity::GLOBAL
            }
        };
        self.bump();
        done
    }

    /// Translation switched on or off, or a new root table: handles must look again.
    pub fn translation_changed(&self) {
        self.bump();
    }
}

/// One VT-d remapping unit.
#[derive(Clone, Debug)]
pub struct RemappingUnit {
    pub(crate) inner: Arc<Inner>,
}

impl RemappingUnit {
    /// A unit in its reset state (translation off, fault event masked) over `mem`, sending its
    /// interrupts through `msi`.
    pub fn new(
        config: Config,
        mem: Arc<Memory>,
        msi: Arc<dyn MsiSender>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let inner = Inner {
            cap: config.cap(),
            ecap: config.ecap(),
            regs: Mutex::new(Regs::new(usize::from(config.fault_records))),
            contexts: RwLock::new(ContextCache::new(config.context_cache_capacity)),
            iotlb: RwLock::new(Iotlb::new(config.iotlb_capacity)),
            config,
            mem,
            msi,
            te: AtomicBool::new(false),
            root_table: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            ir: RwLock::new(IrState::default()),
            ir_listener: OnceLock::new(),
            stats: Stats::default(),
            handle_hits: Mutex::new(Vec::new()),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The handle through which device `sid` (bus << 8 | device << 3 | function) does its DMA.
    pub fn attach(&self, sid: u16) -> DeviceHandle {
        DeviceHandle::new(self.inner.clone(), sid)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The unit's own counters (not counting the hits of the device handles' caches).
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// All counters now, the device handles' cache hits included.
    pub fn snapshot(&self) -> StatsSnapshot {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let s = &self.inner.stats;
        let (mut leaf_hits, mut untranslated) = (0, 0);
        for h in lock(&self.inner.handle_hits).iter() {
            leaf_hits += n(&h.leaf);
            untranslated += n(&h.untranslated);
        }
        StatsSnapshot {
            translations: n(&s.translations) + leaf_hits + untranslated,
            iotlb_hits: n(&s.iotlb_hits) + leaf_hits,
            iotlb_misses: n(&s.iotlb_misses),
            walks: n(&s.walks),
            inv_context: n(&s.inv_context),
            inv_global: n(&s.inv_global),
            inv_domain: n(&s.inv_domain),
            inv_page: n(&s.inv_page),
            inv_wait: n(&s.inv_wait),
            inv_iec: n(&s.inv_iec),
            faults: n(&s.faults),
        }
    }
}
