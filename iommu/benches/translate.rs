//! Translation and invalidation costs, driven through the public interface as a VMM would:
//! tables in guest memory, registers through MMIO, DMA through a device handle.
//!
//! - `hit/one_page`: a translation served by the handle's own cache;
//! - `hit/stream_1MiB`: 256 consecutive 4 KiB translations, all cached (throughput per page);
//! - `psi_then_walk`: a page-selective invalidation of the page (queued, with a wait
//!   descriptor), then its translation, which must walk 4 levels;
//! - `psi`, `dsi`: the invalidations alone. The walk costs `psi_then_walk` minus `psi`.
//! - `native/...`: the same through `DeviceHandle::translate_one`, the lock-free native path.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iommu::spec::{desc, gcmd, reg};
use iommu::{Access, Config, DeviceHandle, Memory, MsiMessage, MsiSender, RemappingUnit};
use vm_memory::{Bytes, GuestAddress, Iommu, Permissions};

struct NoMsi;

impl MsiSender for NoMsi {
    fn send(&self, _: MsiMessage) {}
}

const SID: u16 = 0x18;
const DID: u64 = 1;
const RW: u64 = 3;

struct Bench {
    mem: Arc<Memory>,
    unit: RemappingUnit,
    handle: DeviceHandle,
    queue: u64,
    tail: u64,
    status: u64,
}

impl Bench {
    /// 1 MiB at IOVA 0x4000_0000 mapped with 4 KiB pages in 4-level tables, queued invalidation on.
    fn new() -> Self {
        let mem = Arc::new(Memory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap());
        let unit = RemappingUnit::new(Config::default(), mem.clone(), Arc::new(NoMsi)).unwrap();
        let mut next = 0x100_0000u64;
        let mut alloc = || {
            next += 0x1000;
            next
        };
        let (root, ctx, pml4, pdpt, pd, pt) =
            (alloc(), alloc(), alloc(), alloc(), alloc(), alloc());
        let (queue, status) = (alloc(), alloc());
        let q = |addr: u64, v: u64| mem.write_obj(v, GuestAddress(addr)).unwrap();
        q(root, ctx | 1);
        q(ctx + u64::from(SID & 0xff) * 16, pml4 | 1);
        q(ctx + u64::from(SID & 0xff) * 16 + 8, 2 | (DID << 8));
        q(pml4, pdpt | RW);
        q(pdpt + 8, pd | RW); // IOVA 0x4000_0000: PDPT index 1
        q(pd, pt | RW);
        for i in 0..256u64 {
            q(pt + i * 8, (0x200_0000 + i * 0x1000) | RW);
        }
        let w = |off: u64, v: u64| unit.mmio_write(off, &v.to_le_bytes());
        w(reg::RTADDR, root);
        unit.mmio_write(reg::GCMD, &gcmd::SRTP.to_le_bytes());
        w(reg::IQA, queue);
        unit.mmio_write(reg::GCMD, &(gcmd::QIE).to_le_bytes());
        unit.mmio_write(reg::GCMD, &(gcmd::QIE | gcmd::TE).to_le_bytes());
        let handle = unit.attach(SID);
        Self {
            mem,
            unit,
            handle,
            queue,
            tail: 0,
            status,
        }
    }

    fn translate(&self, iova: u64, len: usize) -> usize {
        self.handle
            .translate(GuestAddress(iova), len, Permissions::Read)
            .unwrap()
            .count()
    }

    /// Queues an invalidation and a wait descriptor, as Linux does, and rings the tail.
    fn invalidate(&mut self, lo: u64, hi: u64) {
        for (a, b) in [
            (lo, hi),
            (desc::WAIT | desc::WAIT_SW | (1 << 32), self.status),
        ] {
            let at = self.queue + (self.tail % 256) * 16;
            self.mem.write_obj(a, GuestAddress(at)).unwrap();
            self.mem.write_obj(b, GuestAddress(at + 8)).unwrap();
            self.tail = (self.tail + 1) % 256;
        }
        self.unit
            .mmio_write(reg::IQT, &((self.tail << 4) as u32).to_le_bytes());
    }
}

fn benches(c: &mut Criterion) {
    let mut b = Bench::new();
    let base = 0x4000_0000u64;
    b.translate(base, 8);
    c.bench_function("hit/one_page", |bn| {
        bn.iter(|| black_box(b.translate(black_box(base), 8)))
    });

    let mut group = c.benchmark_group("hit");
    group.throughput(Throughput::Elements(256));
    for i in 0..256 {
        b.translate(base + i * 0x1000, 0x1000);
    }
    group.bench_function("stream_1MiB", |bn| {
        bn.iter(|| {
            for i in 0..256u64 {
                black_box(b.translate(base + i * 0x1000, 0x1000));
            }
        })
    });
    group.finish();

    let psi = (desc::IOTLB | (3 << 4) | (DID << 16), base);
    c.bench_function("psi_then_walk", |bn| {
        bn.iter(|| {
            b.invalidate(psi.0, psi.1);
            black_box(b.translate(base, 8))
        })
    });
    c.bench_function("psi", |bn| bn.iter(|| b.invalidate(psi.0, psi.1)));

    b.handle.translate_one(base, Access::READ).unwrap();
    c.bench_function("native/hit_one_page", |bn| {
        bn.iter(|| black_box(b.handle.translate_one(black_box(base), Access::READ)))
    });
    let mut group = c.benchmark_group("native");
    group.throughput(Throughput::Elements(256));
    group.bench_function("stream_1MiB", |bn| {
        bn.iter(|| {
            for i in 0..256u64 {
                black_box(b.handle.translate_one(base + i * 0x1000, Access::READ)).unwrap();
            }
        })
    });
    group.finish();
    c.bench_function("native/psi_then_walk", |bn| {
        bn.iter(|| {
            b.invalidate(psi.0, psi.1);
            black_box(b.handle.translate_one(base, Access::READ))
        })
    });
    c.bench_function("dsi", |bn| {
        bn.iter(|| b.invalidate(desc::IOTLB | (2 << 4) | (DID << 16), 0))
    });
}

criterion_group!(translate, benches);
criterion_main!(translate);
