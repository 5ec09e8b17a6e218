//! The virtio-blk device model driven by a synthetic driver in guest memory, through a direct DMA
//! handle: a request is made available (header, data segments of 4 KiB as Linux's page-sized
//! scatter lists give, status), the worker serves the queue, and the driver takes the used
//! element. The image is a host file (page cache), so this measures the device model and the
//! system calls it makes, not a disk.
//!
//! - `read/4KiB`, `read/64KiB`: VIRTIO_BLK_T_IN of one and of sixteen 4 KiB segments;
//! - `write/4KiB`, `write/64KiB`: VIRTIO_BLK_T_OUT with FLUSH negotiated (no sync per write).

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

struct Rig {
    mem: Arc<GuestMemory>,
    _dev: VirtioPci<Block>,
    worker: VirtioWorker<Block>,
    queue: SyntheticQueue,
    _disk: TempFile,
    next_sector: u64,
}

impl Rig {
    fn new() -> Self {
        let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap());
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
            DmaHandle::Direct(mem.clone()),
            Arc::new(Quiet),
            Arc::new(Quiet),
            Arc::new(Quiet),
        )
        .unwrap();
        let queue = SyntheticQueue::new(mem.clone(), 0x10_0000, 64);
        let features = (1 << 32) | (1 << 9) | (1 << 2);
        let status = initialise(&mut dev, features, &[&queue], &[1]);
        assert_eq!(status & 4, 4, "DRIVER_OK");
        Self {
            mem,
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
        self.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

fn requests(c: &mut Criterion) {
    let mut rig = Rig::new();
    for (name, kind) in [("read", 0u32), ("write", 1)] {
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        for pages in [1u64, 16] {
            group.bench_function(format!("{}KiB", pages * 4), |b| {
                b.iter(|| assert_eq!(black_box(rig.request(kind, pages)), 0))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, requests);
criterion_main!(benches);
