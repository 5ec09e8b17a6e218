//! An address-range bus for port I/O or MMIO: a vCPU exit looks up the device that owns the address
//! and hands it the access with the offset into the device's range.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` into the range registered at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` into the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors when registering a range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range {base:#x}+{len:#x} is empty or wraps around.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around")]
    BadRange { base: u64, len: u64 },
    /// The range overlaps one that is already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

/// A shared, lockable device as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Maps non-overlapping address ranges to devices. Lookups take a read lock only, so vCPUs do not
/// serialise on the bus; each device has its own lock.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Entry>>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(ranges.iter().map(|(base, e)| (*base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        let before = ranges.range(..end).next_back();
        if let Some((b, e)) = before
            && b.saturating_add(e.len) > base
        {
            return Err(BusError::Overlap { base, len });
        }
        ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Removes the range registered at exactly `base`; returns whether there was one.
    pub fn remove(&self, base: u64) -> bool {
        let mut ranges = self.ranges.write().unwrap_or_else(PoisonError::into_inner);
        ranges.remove(&base).is_some()
    }

    /// Finds the device whose range holds all of `[addr, addr + size)`.
    fn lookup(&self, addr: u64, size: usize) -> Option<(u64, u64, SharedDevice)> {
        let ranges = self.ranges.read().unwrap_or_else(PoisonError::into_inner);
        let (base, entry) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then(|| (*base, offset, entry.device.clone()))
    }

    /// Dispatches a read; returns false when no device owns the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, offset, device)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .read(base, offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device owns the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr, data.len()) {
            Some((base, offset, device)) => {
                device
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .write(base, offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.last = Some((base, offset, data.to_vec()));
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, dev.clone()).unwrap();
        let mut buf = [0u8; 2];
        assert!(bus.read(0x104, &mut buf));
        assert_eq!(buf, [4, 4]);
        assert!(bus.write(0x10e, &[1, 2]));
        assert_eq!(dev.lock().unwrap().last, Some((0x100, 0xe, vec![1, 2])));
    }

    #[test]
    fn rejects_accesses_outside_or_straddling_a_range() {
        let bus = Bus::new();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder::default())))
            .unwrap();
        let mut buf = [0u8; 4];
        assert!(!bus.read(0xff, &mut buf[..1]));
        assert!(!bus.read(0x10e, &mut buf));
        assert!(!bus.write(0x110, &[0]));
        assert!(!bus.read(u64::MAX, &mut buf));
    }

    #[test]
    fn refuses_overlaps_and_empty_ranges() {
        let bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(0x100, 0x10, dev()).unwrap();
        assert!(matches!(
            bus.insert(0x10f, 1, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x11, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x200, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0xf0, 0x10, dev()).unwrap();
        bus.insert(0x110, 0x10, dev()).unwrap();
        assert!(bus.remove(0x110));
        assert!(!bus.remove(0x110));
    }
}
