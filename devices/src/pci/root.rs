//! The root complex of PCI segment 0, bus 0: the host bridge at 00:00.0, up to 31 more devices
//! (function 0 each), and the two ways to reach their configuration space.

use std::sync::{Arc, Mutex, PoisonError};

use vm_allocator::{AddressAllocator, AllocPolicy};

use super::config::{ConfigSpace, command, offset};
use super::{BarKind, Bdf, PciDevice};
use crate::{Bus, BusDevice};

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

/// Why a device could not be attached.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// All 32 device numbers are taken.
    #[error("PCI bus 0 is full")]
    BusFull,
    /// The BAR windows are exhausted.
    #[error("no room for a {size:#x}-byte BAR in the PCI window")]
    NoBarSpace {
        /// The BAR's size.
        size: u64,
    },
}

/// Where a device's BARs are mapped on the buses now.
type Mappings = [Option<(BarKind, u64, u64)>; 6];

struct Slot {
    device: SharedPciDevice,
    mapped: Mutex<Mappings>,
}

/// One BAR of a device as the MMIO or port-I/O bus sees it.
struct BarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_read(self.bar, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.device
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_write(self.bar, offset, data);
    }
}

/// Bus 0's devices by device number, and the buses their BARs appear on. BARs are placed when a
/// device is added, as firmware would (decode enabled, interrupt line set); when the guest moves a
/// BAR or turns decoding off, its bus mapping follows.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    mmio: Arc<Bus>,
    pio: Arc<Bus>,
    mmio_window: AddressAllocator,
    io_window: AddressAllocator,
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

/// The BARs that decode now: placed (non-zero) and enabled in the command register.
fn decoding_bars(config: &ConfigSpace) -> Mappings {
    let cmd = config.command();
    std::array::from_fn(|i| {
        let (kind, addr, size) = config.bar(i)?;
        let enabled = match kind {
            BarKind::Io => cmd & command::IO != 0,
            _ => cmd & command::MEMORY != 0,
        };
        (enabled && addr != 0).then_some((kind, addr, size))
    })
}

impl PciRoot {
    /// A bus with the host bridge at device 0, placing memory BARs in `mmio_window` and I/O BARs in
    /// `io_window` ((base, size) each), and mapping them on `mmio` and `pio`.
    pub fn new(
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        mmio_window: (u64, u64),
        io_window: (u64, u64),
    ) -> Self {
        let window = |(base, size): (u64, u64)| {
            AddressAllocator::new(base, size).unwrap_or_else(|_| {
                // An empty or wrapping window: one that can never allocate.
                AddressAllocator::new(u64::MAX, 1)
                    .unwrap_or_else(|_| unreachable!("one byte at the top fits"))
            })
        };
        let mut slots: Vec<Option<Slot>> = (0..32).map(|_| None).collect();
        if let Some(s) = slots.first_mut() {
            *s = Some(Slot {
                device: Arc::new(Mutex::new(HostBridge::new())),
                mapped: Mutex::new(Default::default()),
            });
        }
        Self {
            slots,
            mmio,
            pio,
            mmio_window: window(mmio_window),
            io_window: window(io_window),
        }
    }

    /// The slot the next [`PciRoot::add`] will use, if any is free.
    pub fn next_slot(&self) -> Option<u8> {
        self.slots.iter().position(Option::is_none).map(|i| i as u8)
    }

    /// Puts `device` in the first free slot: places its BARs, enables decoding and bus mastering
    /// as firmware would, sets the interrupt line register to `irq`, and maps the BARs. Returns the
    /// device's address.
    pub fn add(&mut self, device: SharedPciDevice, irq: Option<u8>) -> Result<Bdf, PciError> {
        let index = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        {
            let mut d = device.lock().unwrap_or_else(PoisonError::into_inner);
            let config = d.config();
            for bar in 0..6 {
                let Some((kind, _, size)) = config.bar(bar) else {
                    continue;
                };
                let window = if kind == BarKind::Io {
                    &mut self.io_window
                } else {
                    &mut self.mmio_window
                };
                let range = window
                    .allocate(size, size, AllocPolicy::FirstMatch)
                    .map_err(|_| PciError::NoBarSpace { size })?;
                config.place_bar(bar, range.start());
            }
            let cmd = config.command() | command::IO | command::MEMORY | command::BUS_MASTER;
            config.set_u16(offset::COMMAND, cmd);
            if let Some(line) = irq {
                config.set_u8(offset::INTERRUPT_LINE, line);
            }
        }
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Some(Slot {
                device,
                mapped: Mutex::new(Default::default()),
            });
        }
        self.remap(index);
        Ok(Bdf::device(index as u8))
    }

    fn slot(&self, bus: u8, device: u8, function: u8) -> Option<(usize, &Slot)> {
        if bus != 0 || function != 0 {
            return None;
        }
        let index = usize::from(device);
        Some((index, self.slots.get(index)?.as_ref()?))
    }

    /// Brings the bus mappings of slot `index` in line with its BARs and command register. The
    /// device's lock is not held while the buses change, so a BAR access in flight cannot deadlock
    /// with it. A BAR whose range is taken stays unmapped until a later remap finds it free.
    /// Returns whether a mapping was removed (its range may be what another BAR waits for).
    fn remap(&self, index: usize) -> bool {
        let Some(Some(slot)) = self.slots.get(index) else {
            return false;
        };
        let mut freed = false;
        // The mapping lock first, then the device's (briefly): two configuration writes to one
        // device cannot interleave their reads and their bus updates.
        let mut mapped = slot.mapped.lock().unwrap_or_else(PoisonError::into_inner);
        let wanted = decoding_bars(
            slot.device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config(),
        );
        for (bar, (now, want)) in mapped.iter_mut().zip(wanted).enumerate() {
            if *now == want {
                continue;
            }
            if let Some((kind, addr, _)) = now.take() {
                let bus = if kind == BarKind::Io {
                    &self.pio
                } else {
                    &self.mmio
                };
                bus.remove(addr);
                freed = true;
            }
            if let Some((kind, addr, size)) = want {
                let bus = if kind == BarKind::Io {
                    &self.pio
                } else {
                    &self.mmio
                };
                let region = Arc::new(Mutex::new(BarRegion {
                    device: slot.device.clone(),
                    bar,
                }));
                match bus.insert(addr, size, region) {
                    Ok(()) => *now = want,
                    // A BAR moved onto another device's range (or mid-sizing) decodes nothing.
                    Err(e) => log::debug!("PCI 00:{index:02x}.0 BAR{bar} not mapped: {e}"),
                }
            }
            slot.device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .bar_moved(bar, now.map(|(_, addr, _)| addr));
        }
        freed
    }

    /// A configuration read; absent devices read all ones (a master abort).
    pub fn config_read(&self, bus: u8, device: u8, function: u8, offset: u16, data: &mut [u8]) {
        match self.slot(bus, device, function) {
            Some((_, s)) => s
                .device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .config()
                .read(usize::from(offset), data),
            None => data.fill(0xff),
        }
    }

    /// A configuration write; writes to absent devices are dropped.
    pub fn config_write(&self, bus: u8, device: u8, function: u8, offset: u16, data: &[u8]) {
        let Some((index, s)) = self.slot(bus, device, function) else {
            return;
        };
        {
            let mut d = s.device.lock().unwrap_or_else(PoisonError::into_inner);
            d.config().write(usize::from(offset), data);
            d.config_written();
        }
        // A BAR that moved or stopped decoding may free a range another device's BAR waits for.
        if self.remap(index) {
            for other in (0..self.slots.len()).filter(|&i| i != index) {
                self.remap(other);
            }
        }
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
    /// n) & 3). An access of `len` bytes that would run past the 256 bytes this mechanism reaches
    /// has no target.
    fn target(&self, port_offset: u64, len: usize) -> Option<(u8, u8, u8, u16)> {
        if self.address & ENABLE == 0 {
            return None;
        }
        let a = self.address;
        let reg = (a & 0xfc) | ((a | port_offset as u32) & 3);
        if reg as usize + len > 0x100 {
            return None;
        }
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
            4..=7 => match self.target(offset - 4, data.len()) {
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
                if let Some((bus, dev, func, reg)) = self.target(offset - 4, data.len()) {
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

    fn root() -> PciRoot {
        PciRoot::new(
            Arc::new(Bus::new()),
            Arc::new(Bus::new()),
            (0xc000_0000, 0x2000_0000),
            (0xc000, 0x4000),
        )
    }

    fn port() -> ConfigAddressPort {
        ConfigAddressPort::new(Arc::new(root()))
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

    /// Mechanism #1 reaches registers 0-0xff only: an access running past 0xff goes nowhere.
    #[test]
    fn port_accesses_stop_at_the_end_of_the_legacy_space() {
        let mut p = port();
        select(&mut p, 0, 0xff);
        let mut b = [0u8; 1];
        p.read(0xcf8, 4, &mut b);
        assert_eq!(b, [0], "the last register is reachable");
        let mut d = [0u8; 4];
        p.read(0xcf8, 4, &mut d);
        assert_eq!(d, [0xff; 4], "extended registers are not");
        select(&mut p, 0, 0xfc);
        p.read(0xcf8, 6, &mut d);
        assert_eq!(d, [0xff; 4]);
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
        let root = Arc::new(root());
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

#[cfg(test)]
mod bar_tests {
    use super::*;

    /// A device whose BARs answer with their number and offset, and which records where the root
    /// says its BARs decode.
    struct Probe(ConfigSpace, Arc<Mutex<Moves>>);

    /// (BAR, where it decodes now) in the order the root reported them.
    type Moves = Vec<(usize, Option<u64>)>;

    impl PciDevice for Probe {
        fn config(&mut self) -> &mut ConfigSpace {
            &mut self.0
        }
        fn bar_moved(&mut self, bar: usize, addr: Option<u64>) {
            self.1.lock().unwrap().push((bar, addr));
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(0);
            if let Some(b) = data.first_mut() {
                *b = (bar as u8) << 4 | offset as u8;
            }
        }
    }

    fn read(bus: &Bus, addr: u64) -> Option<u8> {
        let mut b = [0u8];
        bus.read(addr, &mut b).then_some(b[0])
    }

    #[test]
    fn bars_are_placed_mapped_and_follow_the_guest() {
        let (mmio, pio) = (Arc::new(Bus::new()), Arc::new(Bus::new()));
        let mut root = PciRoot::new(
            mmio.clone(),
            pio.clone(),
            (0xc000_0000, 0x2000_0000),
            (0xc000, 0x4000),
        );
        let mut config = ConfigSpace::new(0x1234, 0x5678, 0, 0);
        config.add_bar(0, BarKind::Memory32, 0x10_0000);
        config.add_bar(1, BarKind::Io, 0x20);
        let moves = Arc::new(Mutex::new(Vec::new()));
        let bdf = root
            .add(Arc::new(Mutex::new(Probe(config, moves.clone()))), Some(11))
            .unwrap();
        assert_eq!(bdf, Bdf::device(1));
        let root = Arc::new(root);
        let mut buf = [0u8; 4];
        root.config_read(0, 1, 0, 0x10, &mut buf);
        let bar0 = u64::from(u32::from_le_bytes(buf));
        assert_eq!(
            bar0, 0xc000_0000,
            "placed in the window, aligned to its size"
        );
        root.config_read(0, 1, 0, 0x3c, &mut buf);
        assert_eq!(buf[0], 11, "interrupt line as firmware sets it");
        assert_eq!(read(&mmio, bar0 + 3), Some(0x03));
        assert_eq!(read(&pio, 0xc000 + 1), Some(0x11));

        // The guest moves BAR0: the old range goes, the new one answers.
        root.config_write(0, 1, 0, 0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(read(&mmio, bar0), None);
        assert_eq!(read(&mmio, 0xd000_0005), Some(0x05));
        // Memory decode off: unmapped; on again: back.
        root.config_write(0, 1, 0, 0x04, &command::IO.to_le_bytes());
        assert_eq!(read(&mmio, 0xd000_0005), None);
        assert_eq!(read(&pio, 0xc000), Some(0x10), "I/O decode still on");
        root.config_write(
            0,
            1,
            0,
            0x04,
            &(command::IO | command::MEMORY).to_le_bytes(),
        );
        assert_eq!(read(&mmio, 0xd000_0005), Some(0x05));
        // Sizing with decode on, then restoring, leaves the BAR where it was.
        root.config_write(0, 1, 0, 0x10, &u32::MAX.to_le_bytes());
        root.config_read(0, 1, 0, 0x10, &mut buf);
        assert_eq!(u32::from_le_bytes(buf), 0xfff0_0000);
        root.config_write(0, 1, 0, 0x10, &0xd000_0000u32.to_le_bytes());
        assert_eq!(read(&mmio, 0xd000_0005), Some(0x05));
        // The device heard of every BAR0 move (for its doorbells), sizing included.
        let bar0_moves: Vec<Option<u64>> = moves
            .lock()
            .unwrap()
            .iter()
            .filter(|(bar, _)| *bar == 0)
            .map(|(_, addr)| *addr)
            .collect();
        assert_eq!(
            bar0_moves,
            vec![
                Some(0xc000_0000),
                Some(0xd000_0000),
                None,
                Some(0xd000_0000),
                Some(0xfff0_0000),
                Some(0xd000_0000)
            ]
        );
    }

    #[test]
    fn a_full_window_is_an_error() {
        let mut root = PciRoot::new(
            Arc::new(Bus::new()),
            Arc::new(Bus::new()),
            (0xc000_0000, 0x10_0000),
            (0xc000, 0x100),
        );
        let big = || {
            let mut c = ConfigSpace::new(1, 1, 0, 0);
            c.add_bar(0, BarKind::Memory32, 0x10_0000);
            Arc::new(Mutex::new(Probe(c, Arc::default())))
        };
        root.add(big(), None).unwrap();
        assert_eq!(
            root.add(big(), None),
            Err(PciError::NoBarSpace { size: 0x10_0000 })
        );
    }

    /// A root whose memory BARs land on `mmio`.
    fn new_root(mmio: &Arc<Bus>) -> PciRoot {
        PciRoot::new(
            mmio.clone(),
            Arc::new(Bus::new()),
            (0xc000_0000, 0x2000_0000),
            (0xc000, 0x4000),
        )
    }

    /// BAR0 of device `dev` as its configuration space holds it.
    fn bar0(root: &PciRoot, dev: u8) -> u32 {
        let mut b = [0u8; 4];
        root.config_read(0, dev, 0, 0x10, &mut b);
        u32::from_le_bytes(b)
    }

    /// A probe with one 32-bit memory BAR of `size` bytes.
    fn probe_with_bar(size: u64) -> SharedPciDevice {
        let mut c = ConfigSpace::new(1, 2, 0, 0);
        c.add_bar(0, BarKind::Memory32, size);
        Arc::new(Mutex::new(Probe(c, Arc::default())))
    }

    #[test]
    fn concurrent_bar_moves_leave_the_mapping_matching_the_config() {
        let mmio = Arc::new(Bus::new());
        let mut root = new_root(&mmio);
        root.add(probe_with_bar(0x1000), None).unwrap();
        let root = Arc::new(root);
        let mut mismatches = 0;
        for _round in 0..200u32 {
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let ts: Vec<_> = [0xd000_0000u32, 0xd100_0000]
                .into_iter()
                .map(|a| {
                    let (root, barrier) = (root.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for k in 0..200u32 {
                            root.config_write(0, 1, 0, 0x10, &(a + (k << 12)).to_le_bytes());
                        }
                    })
                })
                .collect();
            for t in ts {
                t.join().unwrap();
            }
            let bar = u64::from(bar0(&root, 1));
            let mut d = [0u8; 1];
            if !mmio.read(bar, &mut d) {
                mismatches += 1;
            }
        }
        assert_eq!(mismatches, 0, "BAR in config not mapped on the bus");
    }

    #[test]
    fn swapping_two_bars_leaves_both_decoding() {
        let mmio = Arc::new(Bus::new());
        let mut root = new_root(&mmio);
        for _ in 0..2 {
            root.add(probe_with_bar(0x1000), None).unwrap();
        }
        let (a, b) = (bar0(&root, 1), bar0(&root, 2));
        root.config_write(0, 1, 0, 0x10, &b.to_le_bytes());
        root.config_write(0, 2, 0, 0x10, &a.to_le_bytes());
        let mut d = [0u8; 1];
        assert!(
            mmio.read(u64::from(b), &mut d),
            "device 1 at {b:#x} not decoding"
        );
        assert!(
            mmio.read(u64::from(a), &mut d),
            "device 2 at {a:#x} not decoding"
        );
    }
}
