//! The VT-d unit's register page on the MMIO bus.

use iommu::RemappingUnit;

use crate::BusDevice;

/// The 4 KiB register page of a remapping unit, as the MMIO bus dispatches it.
#[derive(Debug)]
pub struct IommuRegisters(pub RemappingUnit);

impl BusDevice for IommuRegisters {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.0.mmio_read(offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        self.0.mmio_write(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use iommu::{Config, MsiMessage, MsiSender};
    use vm_memory::GuestAddress;

    use super::*;
    use crate::Bus;

    struct NoMsi;
    impl MsiSender for NoMsi {
        fn send(&self, _: MsiMessage) {}
    }

    #[test]
    fn the_bus_reaches_the_registers() {
        let mem =
            Arc::new(crate::dma::GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
        let config = Config::default();
        let unit = RemappingUnit::new(config.clone(), mem, Arc::new(NoMsi)).unwrap();
        let bus = Bus::new();
        bus.insert(
            0xfed9_0000,
            0x1000,
            Arc::new(Mutex::new(IommuRegisters(unit))),
        )
        .unwrap();
        let mut cap = [0u8; 8];
        assert!(bus.read(0xfed9_0008, &mut cap));
        assert_eq!(u64::from_le_bytes(cap), config.cap());
        let mut ver = [0u8; 4];
        assert!(bus.read(0xfed9_0000, &mut ver));
        assert_eq!(u32::from_le_bytes(ver), 0x10, "version 1.0");
        // FEDATA is read-write.
        assert!(bus.write(0xfed9_003c, &0x41u32.to_le_bytes()));
        let mut data = [0u8; 4];
        assert!(bus.read(0xfed9_003c, &mut data));
        assert_eq!(u32::from_le_bytes(data), 0x41);
    }
}
