//! The I/O APIC at 0xfec00000 (as the MADT gives it), through IOREGSEL/IOWIN.

use super::io::{mmio_read32, mmio_write32};

pub const BASE: u64 = 0xfec0_0000;
/// Redirection entry bits (low half).
pub const LEVEL: u32 = 1 << 15;
pub const MASKED: u32 = 1 << 16;
pub const REMOTE_IRR: u32 = 1 << 14;

pub fn write(reg: u32, v: u32) {
    // SAFETY: the I/O APIC's index and data registers, identity-mapped MMIO.
    unsafe {
        mmio_write32(BASE, reg);
        mmio_write32(BASE + 0x10, v);
    }
}

pub fn read(reg: u32) -> u32 {
    // SAFETY: as above.
    unsafe {
        mmio_write32(BASE, reg);
        mmio_read32(BASE + 0x10)
    }
}

/// Points pin `pin` at local APIC `dest` (physical) with `low` (vector and flags) as the entry's
/// low half.
pub fn route(pin: u32, low: u32, dest: u32) {
    write(0x11 + 2 * pin, dest << 24);
    write(0x10 + 2 * pin, low);
}

/// The low half of pin `pin`'s entry.
pub fn entry(pin: u32) -> u32 {
    read(0x10 + 2 * pin)
}

/// The EOI register (0x40, version 0x20 and later): clears remote IRR of the entries whose vector
/// field is `vector`.
pub fn eoi(vector: u8) {
    // SAFETY: the I/O APIC's EOI register, identity-mapped MMIO.
    unsafe { mmio_write32(BASE + 0x40, u32::from(vector)) }
}
