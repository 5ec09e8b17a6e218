//! The virtio PCI transport and virtio-blk, driven as a guest driver would: through BAR0, with
//! queues in guest memory.

use std::io::{Read, Seek, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use iommu::{Config, MsiMessage, MsiSender, RemappingUnit};
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::block::{Block, SIZE_MAX};
use super::pci::{VirtioPci, VirtioWorker, layout};
use super::synthetic::{
    Desc, SyntheticQueue, device_features, initialise, read_common, write_common,
};
use super::{NO_VECTOR, feature, status};
use crate::dma::{DmaHandle, GuestMemory};
use crate::pci::PciDevice;
use crate::{InterruptLine, IoEvents, MsiVectors};

#[derive(Default)]
struct Vectors {
    routes: Mutex<Vec<(u16, MsiMessage)>>,
    fired: Mutex<Vec<u16>>,
}

impl MsiVectors for Vectors {
    fn set_route(&self, vector: u16, msg: MsiMessage) {
        self.routes.lock().unwrap().push((vector, msg));
    }
    fn trigger(&self, vector: u16) {
        self.fired.lock().unwrap().push(vector);
    }
}

#[derive(Default)]
struct Line(AtomicBool);

impl InterruptLine for Line {
    fn set_level(&self, asserted: bool) {
        self.0.store(asserted, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Doorbells(Mutex<Vec<(bool, u64)>>);

impl IoEvents for Doorbells {
    fn register(&self, addr: u64, _: &EventFd) {
        self.0.lock().unwrap().push((true, addr));
    }
    fn unregister(&self, addr: u64, _: &EventFd) {
        self.0.lock().unwrap().push((false, addr));
    }
}

struct NoMsi;
impl MsiSender for NoMsi {
    fn send(&self, _: MsiMessage) {}
}

const MEM_SIZE: usize = 4 << 20;
/// Where the rings and the buffers live.
const RINGS: u64 = 0x10000;
const HEADER: u64 = 0x20000;
const DATA: u64 = 0x100000;
const STATUS: u64 = 0x30000;
/// Disk size: 64 sectors.
const DISK: usize = 64 * 512;

struct Rig {
    mem: Arc<GuestMemory>,
    dev: VirtioPci<Block>,
    worker: VirtioWorker<Block>,
    vectors: Arc<Vectors>,
    line: Arc<Line>,
    doorbells: Arc<Doorbells>,
    queue: SyntheticQueue,
    disk: TempFile,
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn rig_with(readonly: bool, dma: impl FnOnce(Arc<GuestMemory>) -> DmaHandle) -> Rig {
    let mem = Arc::new(GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap());
    let disk = TempFile::new().unwrap();
    disk.as_file().write_all(&pattern(DISK, 7)).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(disk.as_path())
        .unwrap();
    let block = Block::new(file, readonly, "test-disk-serial-0123456789").unwrap();
    let vectors = Arc::new(Vectors::default());
    let line = Arc::new(Line::default());
    let doorbells = Arc::new(Doorbells::default());
    let (dev, worker) = VirtioPci::new(
        block,
        dma(mem.clone()),
        vectors.clone(),
        line.clone(),
        doorbells.clone(),
    )
    .unwrap();
    let queue = SyntheticQueue::new(mem.clone(), RINGS, 16);
    Rig {
        mem,
        dev,
        worker,
        vectors,
        line,
        doorbells,
        queue,
        disk,
    }
}

fn rig() -> Rig {
    rig_with(false, DmaHandle::Direct)
}

const OK: u64 = feature::VERSION_1
    | (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH)
    | (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_SEG_MAX);

impl Rig {
    fn start(&mut self) {
        let s = initialise(&mut self.dev, OK, &[&self.queue], &[1]);
        assert_eq!(s & status::DRIVER_OK, status::DRIVER_OK, "status {s:#x}");
    }

    fn header(&self, kind: u32, sector: u64) -> Desc {
        self.mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
        self.mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
        Desc::readable(HEADER, 16)
    }

    fn status_desc() -> Desc {
        Desc::writable(STATUS, 1)
    }

    /// Submits `chain`, lets the worker serve it, and returns (used length, status byte).
    fn submit(&mut self, chain: &[Desc]) -> (u32, u8) {
        let head = self.queue.push(chain);
        self.worker.serve(0);
        let (id, len) = self.queue.pop_used().expect("the request was not returned");
        assert_eq!(id, u32::from(head));
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn read_sectors(&mut self, sector: u64, len: u32) -> (u32, u8) {
        let h = self.header(0, sector);
        let data = Desc {
            addr: DATA,
            len,
            writable: true,
        };
        self.submit(&[h, data, Self::status_desc()])
    }

    fn disk_bytes(&self) -> Vec<u8> {
        let mut f = self.disk.as_file();
        f.rewind().unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

fn find_vendor_caps(dev: &mut dyn PciDevice) -> Vec<(u8, u8, u32, u32)> {
    let c = dev.config();
    let mut at = c.u16_at(0x34) as usize & 0xff;
    let mut found = Vec::new();
    while at != 0 {
        let word = c.u32_at(at);
        if word & 0xff == 0x09 {
            let cfg_type = (word >> 24) as u8;
            let bar = c.u16_at(at + 4) as u8;
            found.push((cfg_type, bar, c.u32_at(at + 8), c.u32_at(at + 12)));
        }
        at = ((word >> 8) & 0xff) as usize;
    }
    found
}

#[test]
fn identity_and_virtio_capabilities() {
    let mut r = rig();
    let c = r.dev.config();
    assert_eq!(c.u32_at(0), 0x1042_1af4, "modern virtio-blk");
    assert_eq!(c.u32_at(8) >> 8, 0x01_8000, "mass storage");
    assert_eq!(c.u32_at(8) & 0xff, 1, "revision 1: modern only");
    assert_eq!(c.u32_at(0x10) & 0x7, 0b100, "64-bit memory BAR0");
    let caps = find_vendor_caps(&mut r.dev);
    assert_eq!(
        caps,
        vec![
            (1, 0, layout::COMMON as u32, layout::COMMON_LEN as u32),
            (3, 0, layout::ISR as u32, 1),
            (4, 0, layout::DEVICE as u32, 64),
            (2, 0, layout::NOTIFY as u32, 4),
        ]
    );
    // Capacity in the device configuration.
    let mut cap = [0u8; 8];
    r.dev.bar_read(0, layout::DEVICE, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), (DISK / 512) as u64);
    assert_eq!(read_common(&mut r.dev, 0x12, 2), 1, "one queue");
}

#[test]
fn features_are_negotiated_and_access_platform_is_enforced_behind_an_iommu() {
    let mut r = rig();
    let offered = device_features(&mut r.dev);
    assert_ne!(offered & feature::VERSION_1, 0);
    assert_eq!(offered & feature::ACCESS_PLATFORM, 0, "no IOMMU");
    // A legacy driver (no VERSION_1) and one asking for what was not offered are refused.
    for bad in [OK & !feature::VERSION_1, OK | (1 << 40)] {
        let s = initialise(&mut r.dev, bad, &[&r.queue], &[0]);
        assert_eq!(s & status::FEATURES_OK, 0, "{bad:#x} accepted");
    }

    let mut r = rig_with(false, |mem| {
        let unit = RemappingUnit::new(Config::default(), mem.clone(), Arc::new(NoMsi)).unwrap();
        DmaHandle::Remapped {
            mem,
            iommu: Arc::new(unit.attach(0x18)),
        }
    });
    let offered = device_features(&mut r.dev);
    assert_ne!(offered & feature::ACCESS_PLATFORM, 0, "behind an IOMMU");
    let s = initialise(&mut r.dev, OK, &[&r.queue], &[0]);
    assert_eq!(
        s & status::FEATURES_OK,
        0,
        "a driver dropping ACCESS_PLATFORM"
    );
    let s = initialise(&mut r.dev, OK | feature::ACCESS_PLATFORM, &[&r.queue], &[0]);
    assert_ne!(s & status::FEATURES_OK, 0);
}

#[test]
fn reads_writes_flushes_and_get_id() {
    let mut r = rig();
    r.start();
    // MSI-X: enable the function and program vector 1 (the queue's).
    let cap = (0x40..0x100)
        .step_by(4)
        .find(|&a| r.dev.config().u32_at(a) & 0xff == 0x11)
        .unwrap();
    r.dev.config().write(cap + 2, &0x8000u16.to_le_bytes());
    r.dev.config_written();
    let entry = u64::from(layout::MSIX_TABLE) + 16;
    r.dev.bar_write(0, entry, &0xfee0_0000u32.to_le_bytes());
    r.dev.bar_write(0, entry + 8, &0x45u32.to_le_bytes());
    r.dev.bar_write(0, entry + 12, &0u32.to_le_bytes());
    assert_eq!(
        r.vectors.routes.lock().unwrap().last(),
        Some(&(
            1,
            MsiMessage {
                address: 0xfee0_0000,
                data: 0x45
            }
        ))
    );

    // Read sectors 2-3 in two segments.
    let h = r.header(0, 2);
    let chain = [
        h,
        Desc::writable(DATA, 512),
        Desc::writable(DATA + 0x3000, 512),
        Rig::status_desc(),
    ];
    assert_eq!(r.submit(&chain), (1025, 0));
    let image = pattern(DISK, 7);
    let mut got = vec![0u8; 512];
    r.mem
        .read_slice(&mut got, GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(got, image[1536..2048]);
    assert_eq!(*r.vectors.fired.lock().unwrap(), vec![1], "queue vector");

    // Write sector 5, flush, and the file has it.
    let new = pattern(512, 99);
    r.mem.write_slice(&new, GuestAddress(DATA)).unwrap();
    let h = r.header(1, 5);
    let data = Desc::readable(DATA, 512);
    assert_eq!(r.submit(&[h, data, Rig::status_desc()]), (1, 0));
    let h = r.header(4, 0);
    assert_eq!(r.submit(&[h, Rig::status_desc()]), (1, 0));
    assert_eq!(r.disk_bytes()[2560..3072], new[..]);

    // GET_ID: 20 bytes of the serial.
    let h = r.header(8, 0);
    let id = Desc::writable(DATA, 20);
    assert_eq!(r.submit(&[h, id, Rig::status_desc()]), (21, 0));
    let mut serial = [0u8; 20];
    r.mem.read_slice(&mut serial, GuestAddress(DATA)).unwrap();
    assert_eq!(&serial, b"test-disk-serial-012");

    // An unknown request type.
    let h = r.header(0x77, 0);
    assert_eq!(
        r.submit(&[h, Rig::status_desc()]).1,
        2,
        "VIRTIO_BLK_S_UNSUPP"
    );
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let mut r = rig_with(true, DmaHandle::Direct);
    let offered = device_features(&mut r.dev);
    assert_ne!(
        offered & (1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO),
        0
    );
    r.start();
    let h = r.header(1, 0);
    let data = Desc::readable(DATA, 512);
    assert_eq!(r.submit(&[h, data, Rig::status_desc()]).1, 1, "IOERR");
    assert_eq!(r.disk_bytes(), pattern(DISK, 7));
    assert_eq!(r.read_sectors(0, 512), (513, 0));
}

#[test]
fn malformed_requests_fail_alone_and_the_device_keeps_serving() {
    let mut r = rig();
    r.start();
    let ioerr = 1u8;
    let (w, ro) = (Desc::writable, Desc::readable);
    // (what, request type and sector, whether the header descriptor leads, the rest).
    let st = Rig::status_desc();
    type Case = (&'static str, (u32, u64), bool, Vec<Desc>);
    let cases: Vec<Case> = vec![
        ("data outside RAM", (0, 0), true, vec![w(1 << 40, 512), st]),
        (
            "data past RAM's end",
            (0, 0),
            true,
            vec![w(MEM_SIZE as u64 - 256, 512), st],
        ),
        (
            "header outside RAM",
            (0, 0),
            false,
            vec![ro(1 << 40, 16), st],
        ),
        ("short header", (0, 0), false, vec![ro(HEADER, 8), st]),
        (
            "read into a readable buffer",
            (0, 0),
            true,
            vec![ro(DATA, 512), st],
        ),
        (
            "write from a writable buffer",
            (1, 0),
            true,
            vec![w(DATA, 512), st],
        ),
        (
            "readable after writable",
            (0, 0),
            true,
            vec![w(DATA, 512), ro(DATA, 16), st],
        ),
        (
            "past the disk's end",
            (0, 63),
            true,
            vec![w(DATA, 1024), st],
        ),
        (
            "sector overflow",
            (0, u64::MAX / 256),
            true,
            vec![w(DATA, 512), st],
        ),
        ("not whole sectors", (0, 0), true, vec![w(DATA, 100), st]),
        (
            "segment over size_max",
            (0, 0),
            true,
            vec![w(DATA, SIZE_MAX + 512), st],
        ),
        ("flush with data", (4, 0), true, vec![ro(DATA, 512), st]),
    ];
    for (what, (kind, sector), with_header, rest) in cases {
        let mut chain = Vec::new();
        let h = r.header(kind, sector);
        if with_header {
            chain.push(h);
        }
        chain.extend(rest);
        let (_, status) = r.submit(&chain);
        assert_eq!(status, ioerr, "{what}");
        assert_eq!(r.read_sectors(1, 512), (513, 0), "after {what}");
    }

    // A loop: descriptor 14 (header) -> 15 (status) -> 14 ...
    r.header(0, 0);
    let q = &mut r.queue;
    // Use fresh descriptors at the end of the table so push() bookkeeping is not disturbed.
    q.write_desc(14, HEADER, 16, super::synthetic::DESC_NEXT, 15);
    q.write_desc(
        15,
        STATUS,
        1,
        super::synthetic::DESC_NEXT | super::synthetic::DESC_WRITE,
        14,
    );
    q.publish(14);
    r.worker.serve(0);
    assert_eq!(r.queue.pop_used(), Some((14, 1)));
    assert_eq!(
        r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        ioerr,
        "loop"
    );

    // No writable byte at all: returned with length 0, nothing written.
    let h = r.header(0, 0);
    let head = r.queue.push(&[h]);
    r.worker.serve(0);
    assert_eq!(r.queue.pop_used(), Some((u32::from(head), 0)));
    assert_eq!(r.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xaa);

    // A status byte outside RAM: nothing to report through, used length 0.
    let h = r.header(0, 0);
    let head = r.queue.push(&[h, w(DATA, 512), w(1 << 40, 1)]);
    r.worker.serve(0);
    assert_eq!(r.queue.pop_used(), Some((u32::from(head), 0)));

    // A head index beyond the queue is skipped.
    r.queue.publish(999);
    r.worker.serve(0);
    assert_eq!(r.queue.pop_used(), None);
    assert_eq!(r.read_sectors(1, 512).1, 0, "still serving");
}

#[test]
fn rings_outside_memory_need_a_reset_and_reset_clears_everything() {
    let mut r = rig();
    r.queue = SyntheticQueue::new(r.mem.clone(), MEM_SIZE as u64 - 0x100, 16);
    let s = initialise(&mut r.dev, OK, &[&r.queue], &[0]);
    assert_ne!(s & status::DEVICE_NEEDS_RESET, 0, "status {s:#x}");
    // INTx (MSI-X off): the configuration interrupt sets ISR bit 1; reading it clears it.
    assert!(r.line.0.load(Ordering::SeqCst));
    let mut isr = [0u8];
    r.dev.bar_read(0, layout::ISR, &mut isr);
    assert_eq!(isr, [2]);
    assert!(!r.line.0.load(Ordering::SeqCst));
    r.worker.serve(0);
    assert_eq!(r.queue.pop_used(), None, "not live");

    // Reset, then a good setup works; queue registers read back as programmed.
    write_common(&mut r.dev, 0x14, 1, 0);
    assert_eq!(read_common(&mut r.dev, 0x14, 1), 0);
    r.queue = SyntheticQueue::new(r.mem.clone(), RINGS, 16);
    r.start();
    write_common(&mut r.dev, 0x16, 2, 0);
    assert_eq!(read_common(&mut r.dev, 0x20, 8), RINGS);
    assert_eq!(read_common(&mut r.dev, 0x1a, 2), 1);
    // Vectors beyond the table read back as NO_VECTOR.
    write_common(&mut r.dev, 0x10, 2, 7);
    assert_eq!(read_common(&mut r.dev, 0x10, 2), u64::from(NO_VECTOR));
    // A queue that does not exist has size 0.
    write_common(&mut r.dev, 0x16, 2, 5);
    assert_eq!(read_common(&mut r.dev, 0x18, 2), 0);
    assert_eq!(r.read_sectors(0, 512), (513, 0));
    // INTx for the queue (MSI-X off), ISR bit 0.
    let mut isr = [0u8];
    r.dev.bar_read(0, layout::ISR, &mut isr);
    assert_eq!(isr, [1]);
}

#[test]
fn doorbells_follow_bar0() {
    let mut r = rig();
    r.dev.bar_moved(0, Some(0xc000_0000));
    r.dev.bar_moved(0, Some(0xd000_0000));
    r.dev.bar_moved(0, None);
    assert_eq!(
        *r.doorbells.0.lock().unwrap(),
        vec![
            (true, 0xc000_3000),
            (false, 0xc000_3000),
            (true, 0xd000_3000),
            (false, 0xd000_3000)
        ]
    );
    // A doorbell write that reaches the device rings the queue's event for the worker.
    r.start();
    let h = r.header(0, 0);
    let data = Desc::writable(DATA, 512);
    r.queue.push(&[h, data, Rig::status_desc()]);
    r.dev.bar_write(0, layout::NOTIFY, &0u16.to_le_bytes());
    assert_eq!(r.worker_events_pending(), 1);
}

impl Rig {
    fn worker_events_pending(&self) -> u64 {
        self.worker.pending(0)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Arbitrary BAR0 and configuration writes, interleaved with queue service, never panic or
    /// hang the device.
    #[test]
    fn hostile_register_writes_are_harmless(
        writes in proptest::collection::vec((0u64..0x8000, 0usize..4, any::<u64>(), any::<bool>()), 1..200)
    ) {
        let mut r = rig();
        r.start();
        for (offset, width, value, config) in writes {
            let len = [1usize, 2, 4, 8][width];
            let bytes = value.to_le_bytes();
            if config {
                r.dev.config().write(offset as usize % 4096, &bytes[..len]);
                r.dev.config_written();
            } else {
                r.dev.bar_write(0, offset, &bytes[..len]);
            }
            let mut back = [0u8; 8];
            r.dev.bar_read(0, offset, &mut back[..len]);
            // Garbage in the rings too.
            r.mem.write_obj(value, GuestAddress(RINGS + (offset % 0x200))).unwrap();
            r.worker.serve(0);
        }
    }
}

#[test]
fn a_bogus_available_index_does_not_keep_the_worker_busy() {
    let mut r = rig();
    r.start();
    // 0x8000 entries "available" in a queue of 16: nothing can be popped.
    r.mem
        .write_obj(0x8000u16, GuestAddress(r.queue.avail + 2))
        .unwrap();
    r.worker.serve(0);
    assert_eq!(
        r.worker_events_pending(),
        0,
        "the worker asked to run again"
    );
    assert_eq!(r.queue.pop_used(), None);
}

#[test]
fn queues_cannot_be_reconfigured_after_driver_ok() {
    let mut r = rig();
    r.start();
    write_common(&mut r.dev, 0x16, 2, 0);
    write_common(&mut r.dev, 0x20, 8, MEM_SIZE as u64 - 0x10);
    write_common(&mut r.dev, 0x18, 2, 4);
    assert_eq!(read_common(&mut r.dev, 0x20, 8), RINGS);
    assert_eq!(read_common(&mut r.dev, 0x18, 2), 16);
    // Status bits stay set until a reset.
    write_common(&mut r.dev, 0x14, 1, u64::from(status::ACKNOWLEDGE));
    assert_eq!(
        read_common(&mut r.dev, 0x14, 1) as u8,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
    );
    assert_eq!(r.read_sectors(0, 512), (513, 0));
}

#[test]
fn intx_stops_when_msix_is_enabled_or_intx_is_disabled() {
    let mut r = rig();
    r.start();
    assert_eq!(r.read_sectors(0, 512), (513, 0));
    assert!(r.line.0.load(Ordering::SeqCst), "INTx with MSI-X off");
    // INTx disable in the command register lowers the line; clearing it raises it again, as the
    // ISR still holds the interrupt.
    let cmd = r.dev.config().command();
    r.dev.config().write(0x04, &(cmd | 0x400).to_le_bytes());
    r.dev.config_written();
    assert!(!r.line.0.load(Ordering::SeqCst));
    r.dev.config().write(0x04, &cmd.to_le_bytes());
    r.dev.config_written();
    assert!(r.line.0.load(Ordering::SeqCst));
    // Enabling MSI-X lowers it too.
    let cap = (0x40..0x100)
        .step_by(4)
        .find(|&a| r.dev.config().u32_at(a) & 0xff == 0x11)
        .unwrap();
    r.dev.config().write(cap + 2, &0x8000u16.to_le_bytes());
    r.dev.config_written();
    assert!(!r.line.0.load(Ordering::SeqCst));
}
