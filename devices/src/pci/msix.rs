//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability in configuration space, and the vector table
//! and pending-bit array a device exposes in one of its BARs. Masked vectors (per vector, or the
//! whole function) record a pending bit instead of sending; unmasking sends what is pending.

use iommu::MsiMessage;

use super::config::ConfigSpace;

/// Capability id.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control: mask bit.
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// Reset state: masked.
    fn default() -> Self {
        Self {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// The MSI-X state of one function. The capability's control word lives in configuration space;
/// this keeps a copy (refreshed by [`Msix::control_written`]) so that a device's worker can signal
/// a vector without the configuration space at hand.
#[derive(Clone, Debug)]
pub struct Msix {
    cap: usize,
    control: u16,
    table: Vec<Entry>,
    pending: Vec<bool>,
    /// Where the table and PBA lie in their BAR.
    table_offset: u64,
    pba_offset: u64,
}

/// What a guest write to the vector table changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableWrite {
    /// The vector whose message (address or data) changed: its route needs updating.
    pub rerouted: Option<u16>,
    /// The vector an unmask released: it was pending and must be sent now.
    pub released: Option<u16>,
}

impl Msix {
    /// Adds an MSI-X capability with `vectors` vectors (1 to 2048) to `config`, its table at
    /// `table_offset` and its PBA at `pba_offset` in BAR `bar` (offsets 8-byte aligned).
    pub fn new(
        config: &mut ConfigSpace,
        vectors: u16,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
    ) -> Self {
        let vectors = vectors.clamp(1, 2048);
        let control = (vectors - 1).to_le_bytes();
        let table = (table_offset & !7 | u32::from(bar & 7)).to_le_bytes();
        let pba = (pba_offset & !7 | u32::from(bar & 7)).to_le_bytes();
        let body = [
            control[0], control[1], table[0], table[1], table[2], table[3], pba[0], pba[1], pba[2],
            pba[3],
        ];
        // Only enable and function mask are writable.
        let writable = [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0];
        let cap = config.add_capability(MSIX_CAP_ID, &body, &writable);
        Self {
            cap,
            control: 0,
            table: vec![Entry::default(); usize::from(vectors)],
            pending: vec![false; usize::from(vectors)],
            table_offset: u64::from(table_offset & !7),
            pba_offset: u64::from(pba_offset & !7),
        }
    }

    /// Whether the guest enabled MSI-X (the device then must not use INTx).
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The message vector `vector` sends.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        let e = self.table.get(usize::from(vector))?;
        Some(MsiMessage {
            address: u64::from(e.addr_lo) | (u64::from(e.addr_hi) << 32),
            data: e.data,
        })
    }

    fn masked(&self, vector: usize) -> bool {
        self.control & CONTROL_FUNCTION_MASK != 0
            || self
                .table
                .get(vector)
                .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// Signals `vector`: true when it is to be sent now; false when MSI-X is off, the vector does
    /// not exist, or it is masked (then its pending bit is set).
    pub fn trigger(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled() || v >= self.table.len() {
            return false;
        }
        if self.masked(v) {
            if let Some(p) = self.pending.get_mut(v) {
                *p = true;
            }
            return false;
        }
        true
    }

    /// After a configuration write: refreshes the control word and returns the pending vectors
    /// that are now unmasked, cleared, for sending.
    pub fn control_written(&mut self, config: &ConfigSpace) -> Vec<u16> {
        self.control = config.u16_at(self.cap + 2);
        if !self.enabled() {
            // Disabled, the function sends nothing, and nothing it held back survives.
            self.clear_pending();
            return Vec::new();
        }
        if self.control & CONTROL_FUNCTION_MASK != 0 {
            return Vec::new();
        }
        (0..self.table.len())
            .filter(|&v| self.release(v))
            .map(|v| v as u16)
            .collect()
    }

    /// Forgets every pending vector (the device was reset).
    pub fn clear_pending(&mut self) {
        self.pending.fill(false);
    }

    /// Clears and reports vector `v`'s pending bit if it may be sent now.
    fn release(&mut self, v: usize) -> bool {
        if self.pending.get(v) != Some(&true) || !self.enabled() || self.masked(v) {
            return false;
        }
        if let Some(p) = self.pending.get_mut(v) {
            *p = false;
        }
        true
    }

    /// Whether `offset` in the BAR falls in the table or the PBA.
    pub fn owns(&self, offset: u64) -> bool {
        let table_end = self.table_offset + ENTRY_SIZE * self.table.len() as u64;
        let pba_end = self.pba_offset + 8 * self.table.len().div_ceil(64) as u64;
        (self.table_offset..table_end).contains(&offset)
            || (self.pba_offset..pba_end).contains(&offset)
    }

    /// A guest read of the table or PBA (4- or 8-byte accesses; others read ones).
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        let value = match data.len() {
            4 => self.dword(offset).map(u64::from),
            8 => self
                .dword(offset)
                .zip(self.dword(offset + 4))
                .map(|(lo, hi)| u64::from(lo) | (u64::from(hi) << 32)),
            _ => None,
        };
        if let Some(v) = value {
            for (d, s) in data.iter_mut().zip(v.to_le_bytes()) {
                *d = s;
            }
        }
    }

    fn dword(&self, offset: u64) -> Option<u32> {
        if !offset.is_multiple_of(4) {
            return None;
        }
        if let Some(rel) = offset
            .checked_sub(self.table_offset)
            .filter(|r| *r < ENTRY_SIZE * self.table.len() as u64)
        {
            let e = self.table.get((rel / ENTRY_SIZE) as usize)?;
            return [e.addr_lo, e.addr_hi, e.data, e.control]
                .get(((rel % ENTRY_SIZE) / 4) as usize)
                .copied();
        }
        let rel = offset.checked_sub(self.pba_offset)?;
        let bit0 = usize::try_from(rel * 8).ok()?;
        (bit0 < self.table.len().div_ceil(64) * 64).then(|| {
            (0..32).fold(0u32, |acc, b| {
                acc | (u32::from(self.pending.get(bit0 + b) == Some(&true)) << b)
            })
        })
    }

    /// A guest write of the table (the PBA is read-only). An aligned 4- or 8-byte write touches
    /// one entry; other writes are dropped.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> TableWrite {
        let mut bytes = [0u8; 8];
        for (d, s) in bytes.iter_mut().zip(data) {
            *d = *s;
        }
        let v = u64::from_le_bytes(bytes);
        let dwords: &[(u64, u32)] = &match data.len() {
            4 => [(offset, v as u32), (u64::MAX, 0)],
            8 => [(offset, v as u32), (offset + 4, (v >> 32) as u32)],
            _ => return TableWrite::default(),
        };
        let mut result = TableWrite::default();
        for &(off, value) in dwords {
            let Some(rel) = off.checked_sub(self.table_offset).filter(|r| r % 4 == 0) else {
                continue;
            };
            let index = (rel / ENTRY_SIZE) as usize;
            let Some(e) = self.table.get_mut(index) else {
                continue;
            };
            let before = *e;
            match (rel % ENTRY_SIZE) / 4 {
                0 => e.addr_lo = value & !3,
                1 => e.addr_hi = value,
                2 => e.data = value,
                _ => e.control = value & VECTOR_MASKED,
            }
            let e = *e;
            if (e.addr_lo, e.addr_hi, e.data) != (before.addr_lo, before.addr_hi, before.data) {
                result.rerouted = Some(index as u16);
            }
            if self.release(index) {
                result.released = Some(index as u16);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (ConfigSpace, Msix) {
        let mut c = ConfigSpace::new(1, 2, 0, 0);
        let m = Msix::new(&mut c, 3, 1, 0x0, 0x800);
        (c, m)
    }

    fn control(c: &mut ConfigSpace, m: &mut Msix, v: u16) -> Vec<u16> {
        c.write(m.cap + 2, &v.to_le_bytes());
        m.control_written(c)
    }

    fn program(m: &mut Msix, vector: u64, data: u32, masked: bool) -> TableWrite {
        let at = vector * ENTRY_SIZE;
        m.write(at, &0xfee0_0000u32.to_le_bytes());
        let w = m.write(at + 8, &data.to_le_bytes());
        assert_eq!(w.rerouted, Some(vector as u16));
        m.write(at + 12, &u32::from(masked).to_le_bytes())
    }

    #[test]
    fn capability_layout_and_read_only_fields() {
        let (mut c, m) = setup();
        assert_eq!(c.u16_at(m.cap) & 0xff, u16::from(MSIX_CAP_ID));
        assert_eq!(c.u16_at(m.cap + 2), 2, "table size - 1");
        assert_eq!(c.u32_at(m.cap + 4), 1, "table at 0 in BAR1");
        assert_eq!(c.u32_at(m.cap + 8), 0x801, "PBA at 0x800 in BAR1");
        c.write(m.cap + 2, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.u16_at(m.cap + 2),
            0xc002,
            "only enable and function mask change"
        );
        let mut b = [0u8; 4];
        m.read(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "vectors start masked");
    }

    #[test]
    fn masked_vectors_pend_and_fire_on_unmask() {
        let (mut c, mut m) = setup();
        assert!(!m.trigger(0), "MSI-X off");
        control(&mut c, &mut m, CONTROL_ENABLE);
        assert_eq!(program(&mut m, 1, 0x41, false), TableWrite::default());
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert!(m.trigger(1));
        assert_eq!(m.message(1), Some(msg));
        // Vector 2 masked: pending bit, then delivered on unmask.
        program(&mut m, 2, 0x42, true);
        assert!(!m.trigger(2));
        let mut pba = [0u8; 8];
        m.read(0x800, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b100);
        let w = m.write(2 * ENTRY_SIZE + 12, &0u32.to_le_bytes());
        assert_eq!(
            w,
            TableWrite {
                rerouted: None,
                released: Some(2)
            }
        );
        m.read(0x800, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        // Function mask holds everything back; clearing it releases.
        assert!(control(&mut c, &mut m, CONTROL_ENABLE | CONTROL_FUNCTION_MASK).is_empty());
        assert!(!m.trigger(1));
        assert_eq!(control(&mut c, &mut m, CONTROL_ENABLE), vec![1]);
        assert!(
            control(&mut c, &mut m, CONTROL_ENABLE).is_empty(),
            "sent once"
        );
        assert!(!m.trigger(9), "no such vector");
        // Disabled: nothing is sent or kept pending.
        control(&mut c, &mut m, 0);
        assert!(!m.trigger(1));
        assert!(control(&mut c, &mut m, CONTROL_ENABLE).is_empty());
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (_c, mut m) = setup();
        let mut b = [0u8; 2];
        m.read(0, &mut b);
        assert_eq!(b, [0xff; 2]);
        assert_eq!(m.write(2, &[1, 2, 3, 4]), TableWrite::default());
        assert_eq!(m.write(0x10_0000, &[1, 2, 3, 4]), TableWrite::default());
        assert_eq!(m.write(0, &[1]), TableWrite::default());
        let mut q = [0u8; 8];
        m.read(0x808, &mut q);
        assert_eq!(q, [0xff; 8], "beyond the PBA");
        assert!(m.owns(0x2c) && m.owns(0x800) && !m.owns(0x30) && !m.owns(0x808));
    }
}
