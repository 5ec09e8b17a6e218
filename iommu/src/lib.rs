//! An emulated Intel VT-d remapping unit (DMA and interrupts): a model over guest memory, with a
//! trait to send MSIs. It knows nothing of KVM, PCI buses or threads of its own.
//!
//! - [`RemappingUnit`] is the unit: its 4 KiB register page (`mmio_read`/`mmio_write`, as a vCPU
//!   exit hands them over), its caches, invalidation (register-based and queued) and fault
//!   recording.
//! - Interrupt remapping: [`RemappingUnit::remap_interrupt`] turns an MSI from a device or the
//!   I/O APIC into the interrupt to deliver (or a fault), and an [`InterruptCacheListener`] hears
//!   when translations it cached go stale.
//! - [`DeviceHandle`] is what a device gets from [`RemappingUnit::attach`] for its requester id and
//!   keeps for its lifetime: every DMA of the device translates through it. It implements
//!   vm-memory's [`vm_memory::Iommu`], so `IommuMemory` (and virtio-queue on top) work through it.
//!
//! Names follow the VT-d specification (rev. 4.x); `spec` holds the layouts.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod cache;
mod config;
mod fast;
mod handle;
mod intremap;
mod qi;
mod regs;
pub mod spec;
mod translate;
mod unit;

pub use config::{Config, ConfigError};
pub use handle::{DeviceHandle, DmaFault, LOCAL_CAPACITY};
pub use intremap::{
    InterruptCacheListener, InterruptCacheScope, InterruptFault, InterruptSource, interrupt_index,
};
pub use translate::Access;
pub use unit::{MsiMessage, MsiSender, RemappingUnit, Stats, StatsSnapshot};

/// Guest memory as the unit reads it.
pub type Memory = vm_memory::GuestMemoryMmap<()>;

/// Locks a mutex, surviving poisoning: the register state stays consistent at every unlock.
pub(crate) fn unit_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
