//! PCI configuration mechanism #1 (0xcf8/0xcfc), bus 0, function 0, dword registers.

use super::io::{inl, outl};

fn select(dev: u32, reg: u32) {
    outl(0xcf8, 0x8000_0000 | ((dev & 0x1f) << 11) | (reg & 0xfc));
}

/// Reads the dword register `reg` of device `dev`.
pub fn config_read32(dev: u32, reg: u32) -> u32 {
    select(dev, reg);
    inl(0xcfc)
}

/// Writes the dword register `reg` of device `dev`.
pub fn config_write32(dev: u32, reg: u32, v: u32) {
    select(dev, reg);
    outl(0xcfc, v);
}

/// The address of memory BAR `index` (0-5) of device `dev`, with the upper half of a 64-bit BAR;
/// None for an I/O BAR.
pub fn bar(dev: u32, index: u32) -> Option<u64> {
    let reg = 0x10 + 4 * index;
    let lo = config_read32(dev, reg);
    if lo & 1 != 0 {
        return None;
    }
    let high = if lo & 0x6 == 0x4 && index < 5 {
        u64::from(config_read32(dev, reg + 4)) << 32
    } else {
        0
    };
    Some(high | u64::from(lo & !0xf))
}
