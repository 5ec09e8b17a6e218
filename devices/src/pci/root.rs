//! The root complex of PCI segment 0, bus 0: the host bridge at 00:00.0, up to 31 more devices
//! (function 0 each), and the two ways to reach their configuration space.

use std::sync::{Arc, Mutex, PoisonError};

use super::config::ConfigSpace;
use super::{Bdf, PciDevice};
use crate::BusDevice;

/// A device as the root complex holds it.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// ECAM bytes per bus: 32 devices x 8 functions x 4 KiB.
pub const ECAM_BUS_SIZE: u64 = 1 << 20;

/// The host bridge: Intel's id as other VMMs use it, class 06:00:00 (host bridge), no BARs.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    /// The host bridge's configuration space.
    pub fn new() -> Self {
        Self {
            config: ConfigSpace::new(0x8086, 0x0d57, 0x06_0000, 0),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

/// Bus 0's devices by device number.
pub struct PciRoot {
    slots: Vec<Option<SharedPciDevice>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let present: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i)
            .collect();
        f.debug_struct("PciRoot")
            .field("devices", &present)
            .finish()
    }
}

impl PciRoot {
    /// A bus with the host bridge at device 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<SharedPciDevice>> = (0..32).map(|_| None).collect();
        if let Some(s) = slots.first_mut() {
            *s = Some(Arc::new(Mutex::new(HostBridge::new())));
        }
        Self { slots }
    }

    /// Puts `device` in the first free slot; returns its address, or None when the bus is full.
    pub fn add(&mut self, device: SharedPciDevice) -> Option<Bdf> {
        let (i, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.is_none())?;
        *slot = Some(device);
        Some(Bdf::device(i as u8))
    }

    fn device(&self, bus: u8, device: u8, function: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    /// A configuration read; absent devices read all ones (a master abort).
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self.device(bus, device, function) {
            Some(d) => d
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config()
                .read(usize::from(offset), data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; writes to absent devices are dropped.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: u16, data: &[u8]) {
        if let Some(d) = self.device(bus, device, function) {
            d.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config()
                .write(usize::from(offset), data);
        }
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS at 0xcf8 (32-bit accesses) and CONFIG_DATA at
/// 0xcfc-0xcff. Register it at 0xcf8 with length 8.
#[derive(Debug)]
pub struct ConfigAddressPort {
    root: Arc<PciRoot>,
    address: u32,
}

/// CONFIG_ADDRESS: enable bit.
const ENABLE: u32 = 1 << 31;

impl ConfigAddressPort {
    /// The ports for `root`.
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root, address: 0 }
    }

    /// The target of a data-port access `port_offset` bytes into CONFIG_DATA: bus, device,
    /// function and register. Some guests put the low two register bits in CONFIG_ADDRESS and
    /// always use 0xcfc, others use 0xcfc + n: both combine as (address & 0xfc) | ((address |
    /// n) & 3).
    fn target(&self, port_offset: u64) -> Option<(u8, u8, u8, u16)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let a = self.address;
        let reg = (a & 0xfc) | ((a | port_offset as u32) & 3);
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            reg as u16,
        ))
    }
}

impl BusDevice for ConfigAddressPort {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target(offset - 4) {
                Some((bus, dev, func, reg)) => self.root.config_read(bus, dev, func, reg, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                // Bits 30:24 are reserved and read as zero.
                self.address = u32::from_le_bytes(b) & !0x7f00_0000;
            }
            4..=7 => {
                if let Some((bus, dev, func, reg)) = self.target(offset - 4) {
                    self.root.config_write(bus, dev, func, reg, data);
                }
            }
            // Other widths at 0xcf8 (0xcf9 is a reset register on some chipsets) are ignored.
            _ => {}
        }
    }
}

/// The ECAM window (PCI Express memory-mapped configuration) of bus 0.
#[derive(Debug)]
pub struct EcamWindow {
    root: Arc<PciRoot>,
}

impl EcamWindow {
    /// The window for `root`; register it on the MMIO bus with length [`ECAM_BUS_SIZE`].
    pub fn new(root: Arc<PciRoot>) -> Self {
        Self { root }
    }

    fn target(offset: u64) -> (u8, u8, u8, u16) {
        (
            (offset >> 20) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 7) as u8,
            (offset & 0xfff) as u16,
        )
    }
}

impl BusDevice for EcamWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let (bus, dev, func, reg) = Self::target(offset);
        self.root.config_read(bus, dev, func, reg, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (bus, dev, func, reg) = Self::target(offset);
        self.root.config_write(bus, dev, func, reg, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port() -> ConfigAddressPort {
        ConfigAddressPort::new(Arc::new(PciRoot::new()))
    }

    fn select(p: &mut ConfigAddressPort, dev: u32, reg: u32) {
        p.write(0xcf8, 0, &(ENABLE | (dev << 11) | reg).to_le_bytes());
    }

    #[test]
    fn host_bridge_ids_through_both_sub_dword_conventions() {
        let mut p = port();
        select(&mut p, 0, 0);
        let mut d = [0u8; 4];
        p.read(0xcf8, 4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        // Device id as a word at 0xcfe...
        let mut w = [0u8; 2];
        p.read(0xcf8, 6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
        // ...and with the low offset bits in CONFIG_ADDRESS and the access at 0xcfc.
        select(&mut p, 0, 2);
        p.read(0xcf8, 4, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0d57);
        // The address register reads back (reserved bits clear).
        let mut a = [0u8; 4];
        p.read(0xcf8, 0, &mut a);
        assert_eq!(u32::from_le_bytes(a), ENABLE | 2);
    }

    #[test]
    fn absent_devices_and_disabled_access_read_all_ones() {
        let mut p = port();
        let mut d = [0u8; 4];
        select(&mut p, 5, 0);
        p.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
        p.write(0xcf8, 0, &0u32.to_le_bytes());
        p.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Writes go nowhere; odd widths at 0xcf8 are ignored.
        p.write(0xcf8, 4, &[1, 2, 3, 4]);
        p.write(0xcf8, 1, &[0x6]);
    }

    #[test]
    fn ecam_reaches_the_same_space_including_extended_registers() {
        let root = Arc::new(PciRoot::new());
        let mut ecam = EcamWindow::new(root.clone());
        let mut d = [0u8; 4];
        ecam.read(0, 0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x0d57_8086);
        ecam.read(0, 8, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 8, 0x06_0000, "class: host bridge");
        ecam.read(0, 1 << 15, &mut d);
        assert_eq!(d, [0xff; 4], "device 1 absent");
        ecam.read(0, 0xffc, &mut d);
        assert_eq!(d, [0; 4], "extended space of a present device");
    }
}
