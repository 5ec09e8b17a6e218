//! The edu DMA test device (1234:11e8) as a driver uses it: found by a PCI scan, BAR0 registers,
//! DMA between guest memory (device addresses: IOVAs behind an IOMMU) and its 4 KiB buffer at
//! device address 0x40000.

use super::io::{mmio_read32, mmio_write32, mmio_write64};
use super::pci::{config_read32, config_write32};

/// The device buffer's device-side address.
pub const BUFFER: u64 = 0x40000;
/// DMA command bits: start, direction (buffer to RAM), interrupt on completion.
pub const TO_RAM: u64 = 2;
pub const IRQ: u64 = 4;

/// An edu device on bus 0.
#[derive(Clone, Copy, Debug)]
pub struct Edu {
    /// Its PCI device number.
    pub dev: u32,
    /// BAR0.
    pub bar: u64,
}

impl Edu {
    /// The first edu device on bus 0, with bus mastering enabled (as a driver does).
    pub fn find() -> Option<Edu> {
        let dev = (0..32).find(|&d| config_read32(d, 0) == 0x11e8_1234)?;
        let bar = u64::from(config_read32(dev, 0x10) & !0xf);
        let command = config_read32(dev, 0x04) & 0xffff;
        config_write32(dev, 0x04, command | 0x6);
        Some(Edu { dev, bar })
    }

    /// The requester id (bus 0, function 0).
    pub fn source_id(&self) -> u16 {
        (self.dev << 3) as u16
    }

    pub fn r32(&self, off: u64) -> u32 {
        // SAFETY: BAR0 of the edu device, identity-mapped device memory below 4 GiB.
        unsafe { mmio_read32(self.bar + off) }
    }

    pub fn w32(&self, off: u64, v: u32) {
        // SAFETY: as above.
        unsafe { mmio_write32(self.bar + off, v) }
    }

    fn w64(&self, off: u64, v: u64) {
        // SAFETY: as above; the DMA registers from 0x80 take 64-bit accesses.
        unsafe { mmio_write64(self.bar + off, v) }
    }

    /// Runs a transfer of `count` bytes and waits for it (bit 0 of the command register).
    /// Returns false if it never completes.
    pub fn dma(&self, src: u64, dst: u64, count: u64, cmd: u64) -> bool {
        self.w64(0x80, src);
        self.w64(0x88, dst);
        self.w64(0x90, count);
        self.w64(0x98, cmd | 1);
        for _ in 0..1_000_000 {
            if self.r32(0x98) & 1 == 0 {
                return true;
            }
        }
        false
    }

    /// Guest memory at device address `addr` into the buffer.
    pub fn read_from(&self, addr: u64, count: u64) -> bool {
        self.dma(addr, BUFFER, count, 0)
    }

    /// The buffer to guest memory at device address `addr`.
    pub fn write_to(&self, addr: u64, count: u64) -> bool {
        self.dma(BUFFER, addr, count, TO_RAM)
    }
}
