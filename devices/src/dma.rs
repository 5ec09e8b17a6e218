//! A device's DMA handle: resolved once when the device is attached, used for every access, and
//! the only path from a device to guest memory.
//!
//! Without an IOMMU it is guest memory itself: a read or write is vm-memory's bounds-checked copy,
//! with no lock, map lookup or dynamic dispatch in between. Behind a VT-d unit it is the unit's
//! handle for the device's requester id, translating each leaf's worth of the access (see the
//! `iommu` crate) before copying.

use std::iter::FusedIterator;
use std::sync::Arc;

use iommu::{Access, DeviceHandle, DmaFault};
use vm_memory::guest_memory::GuestMemorySliceIterator;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap, Permissions,
    VolatileSlice,
};

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
            // Nothing to write touches no page: no translation, so no fault (as for a read).
            DmaHandle::Remapped { .. } if data.is_empty() => Ok(()),
            DmaHandle::Remapped { mem, iommu } => {
                // The common case: one leaf covers the whole write.
                let (gpa, avail) = iommu.translate_one(addr, Access::WRITE)?;
                if avail >= data.len() as u64 {
                    return mem
                        .write_slice(data, GuestAddress(gpa))
                        .map_err(|_| DmaError::NotMemory(gpa));
                }
                // Otherwise translate everything first, so a translation fault part-way leaves
                // memory untouched.
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

/// Code that works on any of vm-memory's address spaces (virtqueues, for one), run by
/// [`DmaHandle::access`] with the handle's address space.
pub trait MemoryUser {
    /// What the code returns.
    type Output;

    /// Runs with `mem` as the device's view of memory.
    fn run<M: vm_memory::GuestMemory>(self, mem: &M) -> Self::Output;
}

impl DmaHandle {
    /// Runs `user` on the device's address space: guest memory itself for a direct handle (the
    /// code is compiled for it, no dispatch per access), or the unit's translation of the device's
    /// addresses (on the unit's native path) for a remapped one.
    pub fn access<U: MemoryUser>(&self, user: U) -> U::Output {
        match self {
            DmaHandle::Direct(mem) => user.run(mem.as_ref()),
            DmaHandle::Remapped { mem, iommu } => user.run(&RemappedMemory { mem, iommu }),
        }
    }

    /// Whether the device sits behind a remapping unit.
    pub fn is_remapped(&self) -> bool {
        matches!(self, DmaHandle::Remapped { .. })
    }
}

/// A device's addresses as vm-memory sees them behind a remapping unit: every range is translated
/// leaf by leaf by the unit (a fault is recorded there) and then bounds-checked as guest memory.
#[derive(Debug)]
pub struct RemappedMemory<'a> {
    mem: &'a GuestMemory,
    iommu: &'a DeviceHandle,
}

impl vm_memory::GuestMemory for RemappedMemory<'_> {
    type PhysicalMemory = GuestMemory;
    type Bitmap = ();

    fn check_range(&self, addr: GuestAddress, count: usize, access: Permissions) -> bool {
        self.get_slices(addr, count, access)
            .is_ok_and(|mut slices| slices.all(|s| s.is_ok()))
    }

    fn get_slices<'a>(
        &'a self,
        addr: GuestAddress,
        count: usize,
        access: Permissions,
    ) -> vm_memory::guest_memory::Result<impl GuestMemorySliceIterator<'a, ()>> {
        Ok(RemappedSlices {
            mem: self.mem,
            iommu: self.iommu,
            addr: addr.0,
            left: count,
            access: Access::from(access),
        })
    }
}

/// The slices of one remapped range, one per leaf (or guest-memory region) it crosses.
struct RemappedSlices<'a> {
    mem: &'a GuestMemory,
    iommu: &'a DeviceHandle,
    addr: u64,
    left: usize,
    access: Access,
}

impl<'a> Iterator for RemappedSlices<'a> {
    type Item = vm_memory::guest_memory::Result<VolatileSlice<'a, ()>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let slice = self
            .iommu
            .translate_one(self.addr, self.access)
            .map_err(|fault| {
                GuestMemoryError::IommuError(vm_memory::iommu::Error::CannotResolve {
                    iova_range: vm_memory::iommu::IovaRange {
                        base: GuestAddress(self.addr),
                        length: self.left,
                    },
                    reason: fault.to_string(),
                })
            })
            .and_then(|(gpa, avail)| {
                let n = self.left.min(usize::try_from(avail).unwrap_or(usize::MAX));
                self.mem.get_slice(GuestAddress(gpa), n)
            });
        match slice {
            // translate_one promises at least one byte; never spin on an empty slice.
            Ok(s) if s.is_empty() => {
                self.left = 0;
                Some(Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(
                    self.addr,
                ))))
            }
            Ok(s) => {
                self.addr = self.addr.wrapping_add(s.len() as u64);
                self.left -= s.len();
                Some(Ok(s))
            }
            Err(e) => {
                // No items after an error.
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for RemappedSlices<'_> {}
impl<'a> GuestMemorySliceIterator<'a, ()> for RemappedSlices<'a> {}

#[cfg(test)]
mod tests {
    use super::*;
    use iommu::spec::{gcmd, reg};
    use iommu::{Config, MsiMessage, MsiSender, RemappingUnit};

    struct NoMsi;
    impl MsiSender for NoMsi {
        fn send(&self, _: MsiMessage) {}
    }

    /// Device 00:03.0 behind a unit whose 4-level tables map IOVA page 0 to 0x30000 and page 1 to
    /// 0x50000; page 2 is unmapped.
    fn remapped() -> (Arc<GuestMemory>, DmaHandle, RemappingUnit) {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let q = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr)).unwrap();
        let (root, ctx, pml4, pdpt, pd, pt) =
            (0x10000, 0x11000, 0x12000, 0x13000, 0x14000, 0x15000);
        q(root, ctx | 1);
        q(ctx + 0x18 * 16, pml4 | 1);
        q(ctx + 0x18 * 16 + 8, 2 | (1 << 8));
        q(pml4, pdpt | 3);
        q(pdpt, pd | 3);
        q(pd, pt | 3);
        q(pt, 0x30000 | 3);
        q(pt + 8, 0x50000 | 3);
        let unit = RemappingUnit::new(Config::default(), mem.clone(), Arc::new(NoMsi)).unwrap();
        unit.mmio_write(reg::RTADDR, &root.to_le_bytes());
        unit.mmio_write(reg::GCMD, &gcmd::SRTP.to_le_bytes());
        unit.mmio_write(reg::GCMD, &gcmd::TE.to_le_bytes());
        let dma = DmaHandle::Remapped {
            mem: mem.clone(),
            iommu: Arc::new(unit.attach(0x18)),
        };
        (mem, dma, unit)
    }

    #[test]
    fn remapped_accesses_split_at_leaf_boundaries() {
        let (mem, dma, _unit) = remapped();
        dma.write(0x100, &[1; 16]).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x30100)).unwrap(),
            1,
            "within one leaf"
        );
        dma.write(0xff0, &[2; 32]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30fff)).unwrap(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000f)).unwrap(), 2);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x50010)).unwrap(), 0);
        let mut back = [0u8; 32];
        dma.read(0xff0, &mut back).unwrap();
        assert_eq!(back, [2; 32]);
    }

    #[test]
    fn a_fault_part_way_through_a_write_leaves_memory_untouched() {
        let (mem, dma, unit) = remapped();
        // Pages 1 (mapped) and 2 (unmapped): nothing may land in page 1.
        let err = dma.write(0x1ff0, &[3; 32]).unwrap_err();
        assert!(
            matches!(
                err,
                DmaError::Remapping(DmaFault::Remapping { iova: 0x2000, .. })
            ),
            "{err:?}"
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x50ff0)).unwrap(), 0);
        let mut fsts = [0u8; 4];
        unit.mmio_read(reg::FSTS, &mut fsts);
        assert_ne!(u32::from_le_bytes(fsts) & iommu::spec::fsts::PPF, 0);
        // Direct handles reach memory as it is.
        let direct = DmaHandle::Direct(mem.clone());
        direct.write(0x50ff0, &[4; 8]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x50ff7)).unwrap(), 4);
        assert_eq!(
            direct.write(2 << 20, &[0]),
            Err(DmaError::NotMemory(2 << 20))
        );
    }

    /// An empty access at an unmapped address is no access: nothing is translated, nothing
    /// faults, in either direction.
    #[test]
    fn empty_accesses_at_unmapped_addresses_do_not_fault() {
        let (_mem, dma, unit) = remapped();
        dma.write(0x2000, &[]).unwrap();
        dma.read(0x2000, &mut []).unwrap();
        let mut fsts = [0u8; 4];
        unit.mmio_read(reg::FSTS, &mut fsts);
        assert_eq!(u32::from_le_bytes(fsts) & iommu::spec::fsts::PPF, 0);
    }

    /// vm-memory code (virtqueues) run through a remapped handle sees the device's addresses:
    /// accesses split at leaf boundaries land where the tables say, and an unmapped page is an
    /// error with the fault recorded by the unit.
    #[test]
    fn generic_code_sees_remapped_addresses() {
        struct CrossLeaf;
        impl MemoryUser for CrossLeaf {
            type Output = (bool, bool, bool);
            fn run<M: vm_memory::GuestMemory>(self, mem: &M) -> (bool, bool, bool) {
                let wrote = mem.write_slice(&[7; 32], GuestAddress(0xff0)).is_ok();
                let readable = mem.check_range(GuestAddress(0x1000), 0x1000, Permissions::Read);
                let unmapped = mem.read_obj::<u64>(GuestAddress(0x2000)).is_err();
                (wrote, readable, unmapped)
            }
        }
        let (mem, dma, unit) = remapped();
        assert_eq!(dma.access(CrossLeaf), (true, true, true));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30fff)).unwrap(), 7);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000f)).unwrap(), 7);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x50010)).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0xfff)).unwrap(),
            0,
            "not identity"
        );
        let mut fsts = [0u8; 4];
        unit.mmio_read(reg::FSTS, &mut fsts);
        assert_ne!(u32::from_le_bytes(fsts) & iommu::spec::fsts::PPF, 0);
        // The same code on a direct handle sees guest memory as it is.
        let direct = DmaHandle::Direct(mem.clone());
        assert_eq!(direct.access(CrossLeaf), (true, true, false));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xfff)).unwrap(), 7);
    }
}
