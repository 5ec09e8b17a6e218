//! Identity mapping beyond the first 4 GiB.
//!
//! The compile-time tables map 0..4 GiB with 2 MiB pages. Each further GiB
//! ("slot" = PDPT entry) gets a page directory from a static pool when
//! asked for. Filling a not-present entry needs no TLB flush.

use core::sync::atomic::{AtomicUsize, Ordering, fence};

use super::Racy;
use super::sys::{PTE_P, PTE_PS, PTE_U, PTE_W, systables};

/// Number of page directories in the pool (one per GiB above 4 GiB).
pub const POOL_SIZE: usize = 60;
/// Highest address that can ever be mapped: the single PML4 entry.
pub const MAX_MAPPABLE: u64 = 512 << 30;

const GIB: u64 = 1 << 30;

#[repr(C, align(4096))]
struct Pool([[u64; 512]; POOL_SIZE]);

static POOL: Racy<Pool> = Racy::new(Pool([[0; 512]; POOL_SIZE]));
static POOL_USED: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// `limit` is above 512 GiB (more than one PML4 entry would be needed).
    BeyondPml4,
    /// The static pool of page directories is used up.
    PoolExhausted,
}

/// Ensures `[0, limit)` is identity mapped (Present|Writable|User, 2 MiB
/// pages). Returns the number of 1 GiB slots added.
pub fn map_identity_above_4g(limit: u64) -> Result<usize, MapError> {
    if limit > MAX_MAPPABLE {
        return Err(MapError::BeyondPml4);
    }
    let slots = limit.div_ceil(GIB) as usize;
    // SAFETY: the tables are identity mapped and only edited from ring 3 on
    // the boot CPU.
    let pdpt = unsafe { &raw mut (*systables()).pdpt } as *mut u64;
    let mut added = 0;
    for slot in 4..slots {
        // SAFETY: slot < 512.
        let entry = unsafe { pdpt.add(slot).read_volatile() };
        if entry & PTE_P != 0 {
            continue;
        }
        let n = POOL_USED.load(Ordering::Relaxed);
        if n == POOL_SIZE {
            return Err(MapError::PoolExhausted);
        }
        POOL_USED.store(n + 1, Ordering::Relaxed);
        // SAFETY: pool directory n is unused; the pool is in this image.
        let pd = unsafe { (&raw mut (*POOL.get()).0[n]) as *mut u64 };
        for i in 0..512u64 {
            let addr = (slot as u64) * GIB + (i << 21);
            // SAFETY: i < 512.
            unsafe {
                pd.add(i as usize)
                    .write_volatile(addr | PTE_P | PTE_W | PTE_U | PTE_PS)
            };
        }
        // Make the directory visible to the page walker before linking it.
        fence(Ordering::SeqCst);
        // SAFETY: as above; physical address = virtual address.
        unsafe {
            pdpt.add(slot)
                .write_volatile(pd as u64 | PTE_P | PTE_W | PTE_U)
        };
        fence(Ordering::SeqCst);
        added += 1;
    }
    Ok(added)
}

/// Highest address currently identity mapped (exclusive).
pub fn mapped_limit() -> u64 {
    // SAFETY: read of the identity-mapped PDPT.
    let pdpt = unsafe { &raw const (*systables()).pdpt } as *const u64;
    let mut slot = 0;
    // SAFETY: slot < 512.
    while slot < 512 && unsafe { pdpt.add(slot).read_volatile() } & PTE_P != 0 {
        slot += 1;
    }
    slot as u64 * GIB
}
