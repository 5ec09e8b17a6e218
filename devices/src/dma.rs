//! A device's DMA handle: resolved once when the device is attached, used for every access, and
//! the only path from a device to guest memory.
//!
//! Without an IOMMU it is guest memory itself: a read or write is vm-memory's bounds-checked copy,
//! with no lock, map lookup or dynamic dispatch in between. Behind a VT-d unit it is the unit's
//! handle for the device's requester id, translating each leaf's worth of the access (see the
//! `iommu` crate) before copying.

use std::sync::Arc;

use iommu::{Access, DeviceHandle, DmaFault};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory as devices see it.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Why a DMA did not happen (in full).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DmaError {
    /// The remapping unit refused the address (the fault is recorded by the unit).
    #[error(transparent)]
    Remapping(#[from] DmaFault),
    /// The (translated) address is not guest RAM.
    #[error("DMA to {0:#x}: not guest memory")]
    NotMemory(u64),
}

/// How a device reaches guest memory.
#[derive(Debug, Clone)]
pub enum DmaHandle {
    /// Straight to guest memory.
    Direct(Arc<GuestMemory>),
    /// Through a VT-d unit, as the device's requester id.
    Remapped {
        /// Guest memory, for the translated accesses.
        mem: Arc<GuestMemory>,
        /// The unit's handle for this device.
        iommu: Arc<DeviceHandle>,
    },
}

impl DmaHandle {
    /// Reads `buf.len()` bytes at device address `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self {
            DmaHandle::Direct(mem) => mem
                .read_slice(buf, GuestAddress(addr))
                .map_err(|_| DmaError::NotMemory(addr)),
            DmaHandle::Remapped { mem, iommu } => {
                let mut done = 0;
                while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
                    let iova = addr.wrapping_add(done as u64);
                    let (gpa, avail) = iommu.translate_one(iova, Access::READ)?;
                    let n = rest.len().min(usize::try_from(avail).unwrap_or(usize::MAX));
                    let chunk = rest.get_mut(..n).unwrap_or_default();
                    mem.read_slice(chunk, GuestAddress(gpa))
                        .map_err(|_| DmaError::NotMemory(gpa))?;
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Writes `data` at device address `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        match self {
            DmaHandle::Direct(mem) => mem
                .write_slice(data, GuestAddress(addr))
                .map_err(|_| DmaError::NotMemory(addr)),
            DmaHandle::Remapped { mem, iommu } => {
                // Translate everything first, so a fault part-way leaves memory untouched.
                let mut chunks = Vec::new();
                let mut done = 0usize;
                while done < data.len() {
                    let iova = addr.wrapping_add(done as u64);
                    let (gpa, avail) = iommu.translate_one(iova, Access::WRITE)?;
                    let n = (data.len() - done).min(usize::try_from(avail).unwrap_or(usize::MAX));
                    chunks.push((gpa, done, n));
                    done += n;
                }
                for (gpa, from, n) in chunks {
                    let chunk = data.get(from..from + n).unwrap_or_default();
                    mem.write_slice(chunk, GuestAddress(gpa))
                        .map_err(|_| DmaError::NotMemory(gpa))?;
                }
                Ok(())
            }
        }
    }
}
