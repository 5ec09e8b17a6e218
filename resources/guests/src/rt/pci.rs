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
