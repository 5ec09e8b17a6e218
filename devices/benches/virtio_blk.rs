//! The virtio-blk device model driven by a synthetic driver in guest memory: a request is made
//! available (header, data segments of 4 KiB as Linux's page-sized scatter lists give, status),
//! the worker serves the queue, and the driver takes the used element. The image is a host file
//! (page cache), so this measures the device model and the system calls it makes, not a disk.
//!
//! Requests: `read-4KiB`, `read-64KiB` (VIRTIO_BLK_T_IN of one and of sixteen 4 KiB segments),
//! `write-4KiB`, `write-64KiB` (VIRTIO_BLK_T_OUT with FLUSH negotiated, no sync per write). Each
//! through three DMA handles:
//! - `direct`: guest memory itself (no IOMMU);
//! - `iommu`: the VT-d unit's handle for the device, translation on, every page the device
//!   touches mapped with a 4 KiB leaf of a 4-level table (IOVA = guest-physical) and the mappings
//!   stable, as in Linux's lazy mode between flushes;
//! - `iommu-strict`: the same, but after every request its data pages are unmapped, invalidated
//!   with a page-selective IOTLB invalidation (register-based) and mapped again, as strict mode
//!   (`iommu.strict=1`) does around each DMA: the next request walks the tables again.

use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use devices::dma::{DmaHandle, GuestMemory};
use devices::virtio::block::Block;
use devices::virtio::pci::{VirtioPci, VirtioWorker};
use devices::virtio::synthetic::{Desc, SyntheticQueue, initialise};
use devices::{InterruptLine, IoEvents, MsiVectors};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

struct Quiet;
impl MsiVectors for Quiet {
    fn set_route(&self, _: u16, _: iommu::MsiMessage) {}
    fn trigger(&self, _: u16) {}
}
impl InterruptLine for Quiet {
    fn set_level(&self, _: bool) {}
}
impl IoEvents for Quiet {
    fn register(&self, _: u64, _: &EventFd) {}
    fn unregister(&self, _: u64, _: &EventFd) {}
}

const DISK_MIB: u64 = 64;
const HEADER: u64 = 0x20_0000;
const STATUS: u64 = 0x20_1000;
const DATA: u64 = 0x40_0000;

/// The unit's tables: root, context table of bus 0, then the 4-level page tables.
const ROOT: u64 = 0x80_0000;
const CONTEXTS: u64 = 0x80_1000;
const TABLES: u64 = 0x80_2000;
/// Mapped: the rings, header, status and data (IOVA = guest-physical).
const MAPPED: u64 = 8 << 20;
/// The device's requester id (00:01.0) and domain.
const SID: u16 = 0x08;
const DID: u64 = 1;
const R_W: u64 = 3;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Handle {
    Direct,
    Iommu,
    IommuStrict,
}

struct NoMsi;
impl iommu::MsiSender for NoMsi {
    fn send(&self, _: iommu::MsiMessage) {}
}

/// The last-level page-table entry of `iova`.
fn pte(iova: u64) -> u64 {
    TABLES + 0x3000 + 8 * (iova >> 12)
}

/// A unit with translation on and `[0, MAPPED)` mapped one to one with 4 KiB leaves for device
/// SID.
fn remapping_unit(mem: &Arc<GuestMemory>) -> iommu::RemappingUnit {
    use iommu::spec::{gcmd, reg};
    let unit =
        iommu::RemappingUnit::new(iommu::Config::default(), mem.clone(), Arc::new(NoMsi)).unwrap();
    let w = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr)).unwrap();
    w(ROOT, CONTEXTS | 1);
    // Levels 4, 3, 2 each one table page; level 1 has MAPPED / 2 MiB pages.
    let (pml4, pdpt, pd, pt) = (TABLES, TABLES + 0x1000, TABLES + 0x2000, TABLES + 0x3000);
    w(CONTEXTS + 16 * u64::from(SID), pml4 | 1);
    w(CONTEXTS + 16 * u64::from(SID) + 8, 2 | (DID << 8));
    w(pml4, pdpt | R_W);
    w(pdpt, pd | R_W);
    for table in 0..MAPPED >> 21 {
        w(pd + 8 * table, (pt + 0x1000 * table) | R_W);
    }
    for page in 0..MAPPED >> 12 {
        w(pte(page << 12), (page << 12) | R_W);
    }
    let cmd = |bits: u32| unit.mmio_write(reg::GCMD, &bits.to_le_bytes());
    unit.mmio_write(reg::RTADDR, &ROOT.to_le_bytes());
    cmd(gcmd::SRTP);
    cmd(gcmd::TE);
    unit
}

struct Rig {
    mem: Arc<GuestMemory>,
    handle: Handle,
    unit: Option<iommu::RemappingUnit>,
    _dev: VirtioPci<Block>,
    worker: VirtioWorker<Block>,
    queue: SyntheticQueue,
    _disk: TempFile,
    next_sector: u64,
}

impl Rig {
    fn new(handle: Handle) -> Self {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
        let (unit, dma) = match handle {
            Handle::Direct => (None, DmaHandle::Direct(mem.clone())),
            Handle::Iommu | Handle::IommuStrict => {
                let unit = remapping_unit(&mem);
                let dma = DmaHandle::Remapped {
                    mem: mem.clone(),
                    iommu: Arc::new(unit.attach(SID)),
                };
                (Some(unit), dma)
            }
        };
        let disk = TempFile::new().unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..DISK_MIB {
            disk.as_file().write_all(&chunk).unwrap();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk.as_path())
            .unwrap();
        let block = Block::new(file, false, "bench").unwrap();
        let (mut dev, worker) = VirtioPci::new(
            block,
            dma,
            Arc::new(Quiet),
            Arc::new(Quiet),
            Arc::new(Quiet),
        )
        .unwrap();
        let queue = SyntheticQueue::new(mem.clone(), 0x10_0000, 64);
        let platform = if handle == Handle::Direct { 0 } else { 1 << 33 };
        let features = (1 << 32) | platform | (1 << 9) | (1 << 2);
        let status = initialise(&mut dev, features, &[&queue], &[1]);
        assert_eq!(status & 4, 4, "DRIVER_OK");
        Self {
            mem,
            handle,
            unit,
            _dev: dev,
            worker,
            queue,
            _disk: disk,
            next_sector: 0,
        }
    }

    /// One request of `pages` 4 KiB segments; returns its status.
    fn request(&mut self, kind: u32, pages: u64) -> u8 {
        let len = pages * 4096;
        let sector = self.next_sector;
        self.next_sector = (sector + len / 512) % (DISK_MIB * 2048 - len / 512);
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
        let mut chain = Vec::with_capacity(18);
        chain.push(Desc::readable(HEADER, 16));
        chain.extend((0..pages).map(|p| Desc {
            addr: DATA + p * 4096,
            len: 4096,
            writable: kind == 0,
        }));
        chain.push(Desc::writable(STATUS, 1));
        self.queue.push(&chain);
        self.worker.serve(0);
        self.queue.pop_used().expect("served");
        if self.handle == Handle::IommuStrict {
            self.unmap_and_map(pages);
        }
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Strict mode's unmap (clear the leaves, a page-selective invalidation of the range, AM =
    /// log2 of the pages) and the next request's map (the leaves written again; with CM=0 a
    /// not-present to present change needs no invalidation).
    fn unmap_and_map(&self, pages: u64) {
        use iommu::spec::{iotlb, reg};
        let Some(unit) = &self.unit else {
            return;
        };
        for p in 0..pages {
            self.mem
                .write_obj(0u64, GuestAddress(pte(DATA + p * 4096)))
                .unwrap();
        }
        let am = u64::from(pages.trailing_zeros());
        unit.mmio_write(reg::IVA, &(DATA | am).to_le_bytes());
        let psi = iotlb::IVT | (3 << iotlb::IIRG_SHIFT) | (DID << iotlb::DID_SHIFT);
        unit.mmio_write(reg::IOTLB, &psi.to_le_bytes());
        for p in 0..pages {
            let page = DATA + p * 4096;
            self.mem
                .write_obj(page | R_W, GuestAddress(pte(page)))
                .unwrap();
        }
    }
}

fn requests(c: &mut Criterion) {
    for (group_name, handle) in [
        ("direct", Handle::Direct),
        ("iommu", Handle::Iommu),
        ("iommu-strict", Handle::IommuStrict),
    ] {
        let mut rig = Rig::new(handle);
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        for (name, kind) in [("read", 0u32), ("write", 1)] {
            for pages in [1u64, 16] {
                group.bench_function(format!("{name}-{}KiB", pages * 4), |b| {
                    b.iter(|| assert_eq!(black_box(rig.request(kind, pages)), 0))
                });
            }
        }
        group.finish();
        if let Some(unit) = &rig.unit {
            // Every request really went through the unit (and, strict, walked again).
            let s = unit.snapshot();
            assert!(s.translations > 0 && s.faults == 0, "{s}");
            if handle == Handle::IommuStrict {
                assert!(s.inv_page > 0 && s.walks > s.inv_page, "{s}");
            }
        }
    }
}

criterion_group!(benches, requests);
criterion_main!(benches);
