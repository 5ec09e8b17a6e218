//! A synthetic virtio driver, for unit tests and benchmarks: it programs a virtio PCI function
//! through BAR0 as a guest driver would, and keeps split virtqueues in guest memory.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::pci::layout;
use super::status;
use crate::dma::GuestMemory;
use crate::pci::PciDevice;

/// A descriptor as the driver fills it in.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

impl Desc {
    /// A buffer the device reads.
    pub fn readable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn writable(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            writable: true,
        }
    }
}

/// VRING_DESC_F_NEXT and VRING_DESC_F_WRITE.
pub const DESC_NEXT: u16 = 1;
/// See [`DESC_NEXT`].
pub const DESC_WRITE: u16 = 2;

/// One split virtqueue laid out in guest memory by the driver.
#[derive(Debug)]
pub struct SyntheticQueue {
    mem: Arc<GuestMemory>,
    /// Descriptor table, available ring and used ring addresses.
    pub desc: u64,
    /// See `desc`.
    pub avail: u64,
    /// See `desc`.
    pub used: u64,
    /// Queue size.
    pub size: u16,
    avail_idx: u16,
    used_idx: u16,
    next_free: u16,
}

impl SyntheticQueue {
    /// A queue of `size` entries with its rings from `base` (needs 32 * size bytes).
    pub fn new(mem: Arc<GuestMemory>, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        Self {
            mem,
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            used_idx: 0,
            next_free: 0,
        }
    }

    /// Writes descriptor `index` as is.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        let m = &self.mem;
        m.write_obj(addr, GuestAddress(at)).unwrap_or_default();
        m.write_obj(len, GuestAddress(at + 8)).unwrap_or_default();
        m.write_obj(flags, GuestAddress(at + 12))
            .unwrap_or_default();
        m.write_obj(next, GuestAddress(at + 14)).unwrap_or_default();
    }

    /// Makes the chain starting at descriptor `head` available.
    pub fn publish(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(slot))
            .unwrap_or_default();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap_or_default();
    }

    /// Writes `chain` into free descriptors, links it and makes it available; returns its head.
    pub fn push(&mut self, chain: &[Desc]) -> u16 {
        let head = self.next_free;
        for (i, d) in chain.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == chain.len();
            let flags = if last { 0 } else { DESC_NEXT } | if d.writable { DESC_WRITE } else { 0 };
            self.write_desc(index, d.addr, d.len, flags, (index + 1) % self.size);
        }
        self.next_free = (head + chain.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// The next used element (descriptor id, length), if the device returned one.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).ok()?;
        if idx == self.used_idx {
            return None;
        }
        let at = self.used + 4 + 8 * u64::from(self.used_idx % self.size);
        self.used_idx = self.used_idx.wrapping_add(1);
        Some((
            self.mem.read_obj(GuestAddress(at)).ok()?,
            self.mem.read_obj(GuestAddress(at + 4)).ok()?,
        ))
    }
}

/// Writes `value` (of `len` bytes) to the common configuration at `offset`.
pub fn write_common(dev: &mut dyn PciDevice, offset: u64, len: usize, value: u64) {
    let bytes = value.to_le_bytes();
    dev.bar_write(
        0,
        layout::COMMON + offset,
        bytes.get(..len).unwrap_or(&bytes),
    );
}

/// Reads `len` bytes of the common configuration at `offset`.
pub fn read_common(dev: &mut dyn PciDevice, offset: u64, len: usize) -> u64 {
    let mut bytes = [0u8; 8];
    dev.bar_read(
        0,
        layout::COMMON + offset,
        bytes.get_mut(..len).unwrap_or(&mut [0; 8]),
    );
    u64::from_le_bytes(bytes)
}

/// The device's offered features.
pub fn device_features(dev: &mut dyn PciDevice) -> u64 {
    write_common(dev, 0x00, 4, 0);
    let lo = read_common(dev, 0x04, 4);
    write_common(dev, 0x00, 4, 1);
    lo | (read_common(dev, 0x04, 4) << 32)
}

/// Initialises the device as virtio 1.2, 3.1.1 says: reset, ACKNOWLEDGE, DRIVER, `features`,
/// FEATURES_OK (returns the status at once if the device refused it), each queue's size, rings and
/// MSI-X vector (`vectors[i]`), enable, DRIVER_OK. Returns the final status.
pub fn initialise(
    dev: &mut dyn PciDevice,
    features: u64,
    queues: &[&SyntheticQueue],
    vectors: &[u16],
) -> u8 {
    write_common(dev, 0x14, 1, 0);
    write_common(dev, 0x14, 1, u64::from(status::ACKNOWLEDGE));
    let mut s = status::ACKNOWLEDGE | status::DRIVER;
    write_common(dev, 0x14, 1, u64::from(s));
    for (select, half) in [(0u64, features as u32), (1, (features >> 32) as u32)] {
        write_common(dev, 0x08, 4, select);
        write_common(dev, 0x0c, 4, u64::from(half));
    }
    s |= status::FEATURES_OK;
    write_common(dev, 0x14, 1, u64::from(s));
    let got = read_common(dev, 0x14, 1) as u8;
    if got & status::FEATURES_OK == 0 {
        return got;
    }
    for (i, q) in queues.iter().enumerate() {
        write_common(dev, 0x16, 2, i as u64);
        write_common(dev, 0x18, 2, u64::from(q.size));
        write_common(dev, 0x20, 8, q.desc);
        write_common(dev, 0x28, 4, q.avail & 0xffff_ffff);
        write_common(dev, 0x2c, 4, q.avail >> 32);
        write_common(dev, 0x30, 8, q.used);
        let vector = vectors.get(i).copied().unwrap_or(super::NO_VECTOR);
        write_common(dev, 0x1a, 2, u64::from(vector));
        write_common(dev, 0x1c, 2, 1);
    }
    s |= status::DRIVER_OK;
    write_common(dev, 0x14, 1, u64::from(s));
    read_common(dev, 0x14, 1) as u8
}
