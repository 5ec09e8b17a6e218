//! A minimal modern virtio-blk driver (virtio 1.2, 4.1 and 5.2): finds the device by PCI scan,
//! walks its virtio capabilities, negotiates features, sets up one split virtqueue with an MSI-X
//! vector, then reads the whole disk and compares its checksum with the one the host computed,
//! writes a pattern, flushes, reads it back, asks for the serial, and sends malformed requests
//! (buffers outside RAM, a descriptor loop, buffers in the wrong direction, an oversize segment, a
//! read past the end) that must fail with IOERR while the device keeps serving.
//!
//! With `iommu=on` it first programs the VT-d unit as Linux does (rt::vtd; `levels=`, `page=`,
//! `inv=` choose the tables and invalidation) and gives the device IOVAs (guest-physical plus
//! 64 GiB) for its rings, descriptors and buffers; then a buffer at an unmapped IOVA, and one whose
//! mapping was removed and invalidated, must fail with IOERR and a recorded fault.
//!
//! With `bench=on` it skips all that and runs timed loops of 4 KiB reads and writes instead
//! (rt::bench), which QEMU's virtio-blk-pci runs too.
//!
//! Command line: `sectors=N sum=0xFNV write_sector=S [iommu=on levels=L page=P inv=I]`
//! (checksum: FNV-1a of the image), or `bench=on [seconds=S | ops=N] [iommu=on ...]`.

#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering, fence};

use guests::rt::bench::Loop;
use guests::rt::pci::{self, config_read32, config_write32};
use guests::rt::vtd::{self, Flush, Vtd};
use guests::rt::{self, FNV_INIT, fnv, lapic, multiboot};
use guests::{fail, println};

guests::entry!(main);

const VECTOR: u8 = 0x52;
const QUEUE_SIZE: u16 = 16;
/// Bytes per read while checksumming the disk.
const CHUNK: usize = 4096;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;
const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;

/// Descriptor table, available ring and used ring, a page each.
#[repr(C, align(4096))]
struct Rings([u8; 3 * 4096]);
static mut RINGS: Rings = Rings([0; 3 * 4096]);
#[repr(C, align(4096))]
struct Buffer([u8; 2 * CHUNK]);
static mut BUF: Buffer = Buffer([0; 2 * CHUNK]);
static mut HEADER: [u64; 2] = [0; 2];
static mut STATUS: u8 = 0;
/// A page the device reaches through a second IOVA, unmapped on purpose later.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SPARE: Page = Page([0; 4096]);

/// Behind the IOMMU, device addresses are guest-physical plus this (0 without it).
static IOVA_OFFSET: AtomicU64 = AtomicU64::new(0);
const IOVA_BASE: u64 = 1 << 36;
/// Where SPARE's leaf is mapped a second time.
const SPARE_IOVA: u64 = 1 << 37;
const DOMAIN: u16 = 1;

/// The device's address of guest-physical `addr`.
fn io(addr: u64) -> u64 {
    addr + IOVA_OFFSET.load(Ordering::Relaxed)
}

/// The device's BAR0 structures.
struct Device {
    common: u64,
    device: u64,
    notify: u64,
    notify_multiplier: u32,
    msix_table: u64,
}

// SAFETY (all accessors): addresses inside BAR0 of the virtio device, identity-mapped MMIO below
// 4 GiB, at offsets its capabilities gave.
impl Device {
    fn r8(&self, off: u64) -> u8 {
        unsafe { rt::mmio_read8(self.common + off) }
    }
    fn w8(&self, off: u64, v: u8) {
        unsafe { rt::mmio_write8(self.common + off, v) }
    }
    fn r16(&self, off: u64) -> u16 {
        unsafe { rt::mmio_read16(self.common + off) }
    }
    fn w16(&self, off: u64, v: u16) {
        unsafe { rt::mmio_write16(self.common + off, v) }
    }
    fn r32(&self, off: u64) -> u32 {
        unsafe { rt::mmio_read32(self.common + off) }
    }
    fn w32(&self, off: u64, v: u32) {
        unsafe { rt::mmio_write32(self.common + off, v) }
    }
    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
    fn config64(&self, off: u64) -> u64 {
        unsafe { rt::mmio_read64(self.device + off) }
    }
    fn config32(&self, off: u64) -> u32 {
        unsafe { rt::mmio_read32(self.device + off) }
    }
    fn notify(&self, queue: u16) {
        let at = self.notify + u64::from(queue) * u64::from(self.notify_multiplier);
        unsafe { rt::mmio_write16(at, queue) }
    }
    fn msix_entry(&self, vector: u64, address: u32, data: u32) {
        let at = self.msix_table + 16 * vector;
        unsafe {
            rt::mmio_write32(at, address);
            rt::mmio_write32(at + 4, 0);
            rt::mmio_write32(at + 8, data);
            rt::mmio_write32(at + 12, 0);
        }
    }
}

fn rings() -> u64 {
    addr_of!(RINGS) as u64
}

/// The driver's side of the queue.
struct Queue {
    avail_idx: u16,
    used_idx: u16,
}

impl Queue {
    /// Writes descriptor `i` as given.
    fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = rings() + 16 * u64::from(i);
        // SAFETY: inside RINGS' descriptor page; the device reads it only after publication.
        unsafe {
            write_volatile(at as *mut u64, addr);
            write_volatile((at + 8) as *mut u32, len);
            write_volatile((at + 12) as *mut u16, flags);
            write_volatile((at + 14) as *mut u16, next);
        }
    }

    /// Makes descriptor `head` available, rings the doorbell, waits for the device to return it
    /// and for its MSI-X interrupt. Returns the used length.
    fn run(&mut self, dev: &Device, head: u16) -> u32 {
        let avail = rings() + 4096;
        let used = rings() + 2 * 4096;
        let before = rt::interrupt_count(VECTOR);
        // SAFETY: the available ring page of RINGS.
        unsafe {
            write_volatile(
                (avail + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE)) as *mut u16,
                head,
            );
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            write_volatile((avail + 2) as *mut u16, self.avail_idx);
        }
        fence(Ordering::SeqCst);
        dev.notify(0);
        let mut spins = 0u64;
        // SAFETY: the used ring page of RINGS, written by the device.
        while unsafe { read_volatile((used + 2) as *const u16) } == self.used_idx {
            spins += 1;
            if spins > 200_000_000 {
                fail!("request {} not completed", head);
            }
            core::hint::spin_loop();
        }
        fence(Ordering::SeqCst);
        let slot = used + 4 + 8 * u64::from(self.used_idx % QUEUE_SIZE);
        // SAFETY: as above.
        let (id, len) = unsafe {
            (
                read_volatile(slot as *const u32),
                read_volatile((slot + 4) as *const u32),
            )
        };
        self.used_idx = self.used_idx.wrapping_add(1);
        if id != u32::from(head) {
            fail!("used id {} for head {}", id, head);
        }
        if !rt::wait_for_interrupt(VECTOR, before, 100_000_000) {
            fail!("no MSI-X interrupt for request {}", head);
        }
        len
    }

    /// A request of `kind` at `sector` with data segments `data` ((device address, len,
    /// writable)):
    /// header, data, status in descriptors 0.. . Returns (status, used length).
    fn request(
        &mut self,
        dev: &Device,
        kind: u32,
        sector: u64,
        data: &[(u64, u32, bool)],
    ) -> (u8, u32) {
        // SAFETY: HEADER and STATUS are only touched here, between requests.
        unsafe {
            write_volatile(addr_of_mut!(HEADER), [u64::from(kind), sector]);
            write_volatile(addr_of_mut!(STATUS), 0xff);
        }
        self.desc(0, io(addr_of!(HEADER) as u64), 16, DESC_NEXT, 1);
        let mut i = 1u16;
        for &(addr, len, writable) in data {
            let flags = DESC_NEXT | if writable { DESC_WRITE } else { 0 };
            self.desc(i, addr, len, flags, i + 1);
            i += 1;
        }
        self.desc(i, io(addr_of!(STATUS) as u64), 1, DESC_WRITE, 0);
        let len = self.run(dev, 0);
        // SAFETY: written by the device before it returned the chain.
        (unsafe { read_volatile(addr_of!(STATUS)) }, len)
    }
}

/// BUF's device address.
fn buf() -> u64 {
    io(addr_of!(BUF) as u64)
}

fn buffer() -> &'static [u8] {
    // SAFETY: read only between requests, after the device wrote it.
    unsafe { &*addr_of!(BUF.0) }
}

fn hex_arg(key: &str) -> u64 {
    let Some(v) = multiboot::cmdline_value(key) else {
        fail!("missing {}= on the command line", key)
    };
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    parsed.unwrap_or_else(|_| fail!("bad {}={}", key, v))
}

/// Where capability structure `offset` of BAR `index` is, mapped for the program (a BAR the
/// firmware placed above 4 GiB gets identity-mapped).
fn in_bar(dev: u32, index: u32, offset: u32) -> u64 {
    let Some(base) = pci::bar(dev, index) else {
        fail!("virtio structure in I/O BAR {}", index)
    };
    let at = base + u64::from(offset);
    if let Err(e) = rt::map_identity_above_4g(at + 0x1000) {
        fail!("cannot map BAR {} at {:#x}: {:?}", index, base, e);
    }
    at
}

/// Finds the device and its structures (in whichever BARs its capabilities name), and enables
/// bus mastering.
fn find_device() -> (u32, Device, u32) {
    let Some(dev) = (0..32).find(|&d| config_read32(d, 0) == 0x1042_1af4) else {
        fail!("no virtio-blk device (1af4:1042)")
    };
    let command = config_read32(dev, 0x04) & 0xffff;
    config_write32(dev, 0x04, command | 0x6);
    let (mut common, mut device, mut notify, mut mult, mut msix) = (None, None, None, 0, None);
    let mut msix_cap = 0;
    let mut cap = config_read32(dev, 0x34) & 0xff;
    while cap != 0 {
        let head = config_read32(dev, cap);
        match head & 0xff {
            0x09 => {
                let cfg_type = (head >> 24) & 0xff;
                let bar_index = config_read32(dev, cap + 4) & 0xff;
                let offset = config_read32(dev, cap + 8);
                match cfg_type {
                    1 => common = Some(in_bar(dev, bar_index, offset)),
                    2 => {
                        notify = Some(in_bar(dev, bar_index, offset));
                        mult = config_read32(dev, cap + 16);
                    }
                    4 => device = Some(in_bar(dev, bar_index, offset)),
                    _ => {}
                }
            }
            0x11 => {
                msix_cap = cap;
                let table = config_read32(dev, cap + 4);
                msix = Some(in_bar(dev, table & 7, table & !7));
            }
            _ => {}
        }
        cap = (head >> 8) & 0xff;
    }
    let (Some(common), Some(device), Some(notify), Some(msix_table)) =
        (common, device, notify, msix)
    else {
        fail!("missing a virtio structure or MSI-X")
    };
    println!(
        "virtio-blk at 00:{:02x}.0 common {:#x} notify multiplier {}",
        dev, common, mult
    );
    (
        dev,
        Device {
            common,
            device,
            notify,
            notify_multiplier: mult,
            msix_table,
        },
        msix_cap,
    )
}

fn main() -> ! {
    let (pci, dev, msix_cap) = find_device();
    let iommu = (multiboot::cmdline_value("iommu") == Some("on")).then(|| behind_iommu(pci));

    // Initialisation (virtio 1.2, 3.1.1).
    dev.w8(0x14, 0);
    if dev.r8(0x14) != 0 {
        fail!("reset did not clear the status");
    }
    dev.w8(0x14, 1);
    dev.w8(0x14, 1 | 2);
    dev.w32(0x00, 0);
    let lo = dev.r32(0x04);
    dev.w32(0x00, 1);
    let offered = u64::from(lo) | (u64::from(dev.r32(0x04)) << 32);
    if offered & VIRTIO_F_VERSION_1 == 0 {
        fail!("VERSION_1 not offered: {:#x}", offered);
    }
    // ACCESS_PLATFORM, when offered, is accepted as Linux does: the device's addresses are then
    // translated by the platform's IOMMU.
    let wanted = offered
        & (VIRTIO_F_VERSION_1
            | VIRTIO_F_ACCESS_PLATFORM
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_SIZE_MAX);
    for (select, half) in [(0, wanted as u32), (1, (wanted >> 32) as u32)] {
        dev.w32(0x08, select);
        dev.w32(0x0c, half);
    }
    dev.w8(0x14, 1 | 2 | 8);
    if dev.r8(0x14) & 8 == 0 {
        fail!("FEATURES_OK refused for {:#x}", wanted);
    }
    let capacity = dev.config64(0);
    let size_max = dev.config32(8);
    let seg_max = dev.config32(12);
    println!(
        "features {:#x}; capacity {} sectors, seg_max {}, size_max {}",
        wanted, capacity, seg_max, size_max
    );

    // MSI-X: the function on, vector 1 to this CPU, bound to queue 0; no configuration vector.
    lapic::enable();
    let control = config_read32(pci, msix_cap);
    config_write32(pci, msix_cap, control | (1 << 31));
    dev.msix_entry(1, 0xfee0_0000 | (lapic::id() << 12), u32::from(VECTOR));
    dev.w16(0x10, 0xffff);
    dev.w16(0x16, 0);
    let max = dev.r16(0x18);
    if max < QUEUE_SIZE {
        fail!("queue 0 holds only {} entries", max);
    }
    dev.w16(0x18, QUEUE_SIZE);
    dev.w64(0x20, io(rings()));
    dev.w64(0x28, io(rings() + 4096));
    dev.w64(0x30, io(rings() + 2 * 4096));
    dev.w16(0x1a, 1);
    if dev.r16(0x1a) != 1 {
        fail!("vector 1 not taken for queue 0");
    }
    dev.w16(0x1c, 1);
    dev.w8(0x14, 1 | 2 | 8 | 4);
    if dev.r8(0x14) != 1 | 2 | 8 | 4 {
        fail!("status {:#x} after DRIVER_OK", dev.r8(0x14));
    }
    rt::sti();
    let mut q = Queue {
        avail_idx: 0,
        used_idx: 0,
    };
    if multiboot::cmdline_value("bench") == Some("on") {
        bench(&dev, &mut q, capacity);
    }

    let sectors = hex_arg("sectors");
    let want_sum = hex_arg("sum") as u32;
    let write_sector = hex_arg("write_sector");
    if capacity != sectors {
        fail!("capacity {} sectors, want {}", capacity, sectors);
    }

    // The whole disk, 4 KiB per request in two 2 KiB segments.
    let half = (CHUNK / 2) as u32;
    let mut sum = FNV_INIT;
    let mut sector = 0;
    while sector < sectors {
        let left = ((sectors - sector) * 512).min(CHUNK as u64) as u32;
        let segs = [
            (buf(), left.min(half), true),
            (buf() + 4096, left - left.min(half), true),
        ];
        let n = if left > half { 2 } else { 1 };
        let (status, len) = q.request(&dev, 0, sector, &segs[..n]);
        if status != S_OK || len != left + 1 {
            fail!("read at sector {}: status {} used {}", sector, status, len);
        }
        sum = fnv(sum, &buffer()[..left.min(half) as usize]);
        sum = fnv(
            sum,
            &buffer()[4096..4096 + (left - left.min(half)) as usize],
        );
        sector += u64::from(left) / 512;
    }
    if sum != want_sum {
        fail!("disk checksum {:#x}, host says {:#x}", sum, want_sum);
    }
    println!("read: {} sectors, checksum {:#x}", sectors, sum);

    // Write 4 KiB at write_sector, flush, read back.
    // SAFETY: BUF is ours between requests.
    let data = unsafe { &mut *addr_of_mut!(BUF.0) };
    for (i, b) in data[..CHUNK].iter_mut().enumerate() {
        *b = (i * 13 + 5) as u8;
    }
    let written = fnv(FNV_INIT, &data[..CHUNK]);
    let (status, _) = q.request(&dev, 1, write_sector, &[(buf(), CHUNK as u32, false)]);
    if status != S_OK {
        fail!("write: status {}", status);
    }
    let (status, _) = q.request(&dev, 4, 0, &[]);
    if status != S_OK {
        fail!("flush: status {}", status);
    }
    data[..CHUNK].fill(0);
    let (status, _) = q.request(&dev, 0, write_sector, &[(buf(), CHUNK as u32, true)]);
    if status != S_OK || fnv(FNV_INIT, &buffer()[..CHUNK]) != written {
        fail!("read back after write: status {}", status);
    }
    println!(
        "write: 4096 bytes at sector {}, flushed, read back",
        write_sector
    );

    let (status, len) = q.request(&dev, 8, 0, &[(buf(), 20, true)]);
    let id = &buffer()[..20];
    let id_len = id.iter().position(|&b| b == 0).unwrap_or(20);
    let id = core::str::from_utf8(&id[..id_len]).unwrap_or("?");
    if status != S_OK || len != 21 {
        fail!("get-id: status {} used {}", status, len);
    }
    println!("serial: {}", id);

    // Malformed requests: each fails with IOERR, and a good read still works after it. (Behind
    // the IOMMU, 1 << 45 and 2 GiB + 64 GiB are IOVAs nothing maps.)
    let far = 1u64 << 45;
    let unmapped = io(0x8000_0000);
    type Case<'a> = (&'a str, u32, u64, &'a [(u64, u32, bool)]);
    let cases: [Case; 5] = [
        ("data outside RAM", 0, 0, &[(far, 512, true)]),
        (
            "data at an unmapped address",
            0,
            0,
            &[(unmapped, 512, true)],
        ),
        ("data in the wrong direction", 0, 0, &[(buf(), 512, false)]),
        (
            "segment over size_max",
            0,
            0,
            &[(buf(), size_max + 512, true)],
        ),
        ("read past the end", 0, sectors - 1, &[(buf(), 1024, true)]),
    ];
    for (what, kind, sector, segs) in cases {
        let (status, _) = q.request(&dev, kind, sector, segs);
        if status != S_IOERR {
            fail!("{}: status {}, want IOERR", what, status);
        }
        if let Some((v, _)) = &iommu {
            if what == "data at an unmapped address" {
                expect_fault(v, pci, unmapped);
            }
            v.clear_faults();
        }
        let (status, _) = q.request(&dev, 0, 0, &[(buf(), 512, true)]);
        if status != S_OK {
            fail!("after {}: status {}", what, status);
        }
        println!("malformed: {} -> IOERR", what);
    }
    // A descriptor loop: header -> status -> header -> ...
    // SAFETY: as in Queue::request.
    unsafe { write_volatile(addr_of_mut!(STATUS), 0xff) };
    q.desc(0, io(addr_of!(HEADER) as u64), 16, DESC_NEXT, 1);
    q.desc(1, io(addr_of!(STATUS) as u64), 1, DESC_NEXT | DESC_WRITE, 0);
    q.run(&dev, 0);
    // SAFETY: as above.
    if unsafe { read_volatile(addr_of!(STATUS)) } != S_IOERR {
        fail!("descriptor loop: no IOERR");
    }
    let (status, _) = q.request(&dev, 0, 0, &[(buf(), 512, true)]);
    if status != S_OK {
        fail!("after the loop: status {}", status);
    }
    println!("malformed: descriptor loop -> IOERR");
    if let Some((mut v, table)) = iommu {
        unmapped_after_invalidation(&mut v, table, &dev, &mut q, pci);
    }
    rt::cli();
    rt::pass()
}

/// `bench=on`: 4 KiB reads, then 4 KiB writes, one request at a time, each kind a timed loop
/// (rt::bench) over the disk's 4 KiB blocks in turn; then the last block written is read back.
fn bench(dev: &Device, q: &mut Queue, capacity: u64) -> ! {
    let blocks = capacity / 8;
    if blocks == 0 {
        fail!("bench=on needs a disk of at least 4 KiB");
    }
    // SAFETY: BUF is ours between requests.
    let data = unsafe { &mut *addr_of_mut!(BUF.0) };
    let mut last = None;
    for (kind, name) in [(0, "blk-read"), (1, "blk-write")] {
        let mut l = Loop::start(name);
        while l.next_op() {
            let n = l.ops() - 1;
            let sector = (n % blocks) * 8;
            if kind == 1 {
                data[..8].copy_from_slice(&n.to_le_bytes());
                last = Some((sector, n));
            }
            let (status, _) = q.request(dev, kind, sector, &[(buf(), CHUNK as u32, kind == 0)]);
            if status != S_OK {
                fail!("{} {} at sector {}: status {}", name, n, sector, status);
            }
        }
        l.end();
    }
    if let Some((sector, n)) = last {
        data[..8].fill(0);
        let (status, _) = q.request(dev, 0, sector, &[(buf(), CHUNK as u32, true)]);
        if status != S_OK || data[..8] != n.to_le_bytes() {
            fail!("the last write (block {}) did not read back", sector / 8);
        }
    }
    rt::cli();
    rt::pass()
}

/// Programs the unit for device `pci` and maps every page the driver gives the device at
/// IOVA_BASE + its address (and SPARE's leaf again at SPARE_IOVA); translation on. Returns the
/// unit and the device's page-table root.
fn behind_iommu(pci: u32) -> (Vtd, u64) {
    let opts = vtd::Options::from_cmdline();
    let Some(mut v) = Vtd::start(&opts) else {
        fail!("iommu=on but no DMAR table")
    };
    let table = v.translated_context((pci << 3) as u8, DOMAIN);
    let size = 1u64 << opts.shift;
    let regions = [
        (rings(), 3 * 4096),
        (addr_of!(BUF) as u64, 2 * CHUNK as u64),
        (addr_of!(HEADER) as u64, 16),
        (addr_of!(STATUS) as u64, 1),
        (addr_of!(SPARE) as u64, 4096),
    ];
    for (start, len) in regions {
        let first = start & !(size - 1);
        let last = (start + len - 1) & !(size - 1);
        v.map(
            table,
            DOMAIN,
            IOVA_BASE + first,
            first,
            last - first + size,
            opts.shift,
        );
    }
    let spare = addr_of!(SPARE) as u64;
    v.map(
        table,
        DOMAIN,
        SPARE_IOVA,
        spare & !(size - 1),
        size,
        opts.shift,
    );
    v.enable_translation();
    IOVA_OFFSET.store(IOVA_BASE, Ordering::Relaxed);
    println!(
        "iommu: device 00:{:02x}.0 uses iovas {:#x} + guest-physical",
        pci, IOVA_BASE
    );
    (v, table)
}

/// The fault a request's buffer at `iova` caused: a write of the device (it fills a read
/// request's buffer), by the device, at the page.
fn expect_fault(v: &Vtd, pci: u32, iova: u64) {
    let Some((_, f)) = v.pending_fault() else {
        fail!("no fault recorded for iova {:#x}", iova)
    };
    if f.address != iova & !0xfff || f.read || u32::from(f.source_id) != pci << 3 {
        fail!("fault {:?}, want a write at {:#x}", f, iova & !0xfff);
    }
    println!(
        "fault: write at iova {:#x} by 00:{:02x}.0 reason {:#x}",
        f.address, pci, f.reason
    );
}

/// A read into SPARE through its second IOVA works; once that leaf is unmapped and the IOTLB
/// invalidated, the same request fails with IOERR and a recorded fault.
fn unmapped_after_invalidation(v: &mut Vtd, table: u64, dev: &Device, q: &mut Queue, pci: u32) {
    let shift = vtd::Options::from_cmdline().shift;
    let spare = addr_of!(SPARE) as u64;
    let iova = SPARE_IOVA + (spare & ((1 << shift) - 1));
    let (status, _) = q.request(dev, 0, 0, &[(iova, 512, true)]);
    // SAFETY: written by the device before it returned the chain.
    let got = unsafe { read_volatile(addr_of!(SPARE.0)) };
    let (status0, _) = q.request(dev, 0, 0, &[(buf(), 512, true)]);
    if status != S_OK || status0 != S_OK || got[..512] != buffer()[..512] {
        fail!("read through the second iova: status {}", status);
    }
    v.set_leaf(table, SPARE_IOVA, shift, 0);
    v.flush(Flush::Page(DOMAIN, SPARE_IOVA, (shift - 12) as u8));
    let (status, _) = q.request(dev, 0, 0, &[(iova, 512, true)]);
    if status != S_IOERR {
        fail!("read into an unmapped, invalidated iova: status {}", status);
    }
    expect_fault(v, pci, iova);
    v.clear_faults();
    println!("unmap: iova {:#x} invalidated, request -> IOERR", iova);
}
