//! PCI: configuration space with its write rules, devices that own one, and the root complex that
//! routes configuration accesses (port 0xcf8/0xcfc and ECAM) to them.

pub mod config;
pub mod msix;
mod root;

pub use config::{BarKind, ConfigSpace};
pub use root::{
    ConfigAddressPort, ECAM_BUS_SIZE, EcamWindow, HostBridge, PciError, PciRoot, SharedPciDevice,
};

/// A device on the PCI bus: its configuration space and its BARs.
pub trait PciDevice: Send {
    /// The device's configuration space.
    fn config(&mut self) -> &mut ConfigSpace;

    /// Called after every guest write to the configuration space (MSI or INTx settings may have
    /// changed).
    fn config_written(&mut self) {}

    /// A guest read of BAR `bar` at `offset`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// A guest write to BAR `bar` at `offset`.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    /// BAR `bar` now decodes at `addr` (None: it stopped decoding), after the buses changed.
    fn bar_moved(&mut self, _bar: usize, _addr: Option<u64>) {}
}

/// Device, function and bus number packed as a requester id: bus << 8 | device << 3 | function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf(pub u16);

impl Bdf {
    /// Bus 0, `device`, function 0.
    pub fn device(device: u8) -> Self {
        Self(u16::from(device & 0x1f) << 3)
    }

    /// The device number.
    pub fn device_number(self) -> u8 {
        ((self.0 >> 3) & 0x1f) as u8
    }
}
