//! A type-0 configuration space (PCI Local Bus 3.0, chapter 6; PCIe extends it to 4 KiB): the
//! bytes, which bits software may write, which are write-1-to-clear, and BAR sizing.

/// Configuration space size: the 4 KiB of PCIe, reachable through ECAM (0xcf8 reaches the first
/// 256 bytes).
pub const CONFIG_SIZE: usize = 4096;

/// Standard header offsets.
pub mod offset {
    /// Vendor id.
    pub const VENDOR_ID: usize = 0x00;
    /// Device id.
    pub const DEVICE_ID: usize = 0x02;
    /// Command.
    pub const COMMAND: usize = 0x04;
    /// Status.
    pub const STATUS: usize = 0x06;
    /// Revision.
    pub const REVISION: usize = 0x08;
    /// Class code (programming interface, subclass, class).
    pub const CLASS: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// First base address register.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor id.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem id.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAPABILITIES: usize = 0x34;
    /// Interrupt line.
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin.
    pub const INTERRUPT_PIN: usize = 0x3d;
}

/// Command register bits.
pub mod command {
    /// I/O space decode.
    pub const IO: u16 = 1 << 0;
    /// Memory space decode.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus mastering (DMA).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// INTx disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register: capabilities list present.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32,
    /// 64-bit memory (takes two BAR slots).
    Memory64,
    /// I/O ports.
    Io,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bar {
    kind: BarKind,
    size: u64,
}

/// A configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    /// Bits software may change.
    writable: Vec<u8>,
    /// Bits a written 1 clears.
    write_one_clears: Vec<u8>,
    bars: [Option<Bar>; 6],
    /// The last capability in the list (0: none yet), and where the next one goes.
    last_capability: usize,
    next_capability: usize,
}

fn range(offset: usize, len: usize) -> Option<std::ops::Range<usize>> {
    let end = offset.checked_add(len)?;
    (end <= CONFIG_SIZE).then_some(offset..end)
}

impl ConfigSpace {
    /// A type-0 header with these ids and class (class << 16 | subclass << 8 | prog-if).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut c = Self {
            bytes: vec![0; CONFIG_SIZE],
            writable: vec![0; CONFIG_SIZE],
            write_one_clears: vec![0; CONFIG_SIZE],
            bars: [None; 6],
            last_capability: 0,
            next_capability: 0x40,
        };
        c.set_u16(offset::VENDOR_ID, vendor);
        c.set_u16(offset::DEVICE_ID, device);
        c.set_u8(offset::REVISION, revision);
        for (i, b) in class.to_le_bytes().iter().take(3).enumerate() {
            c.set_u8(offset::CLASS + i, *b);
        }
        let cmd = command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE;
        c.set_writable(offset::COMMAND, &cmd.to_le_bytes());
        c.set_writable(offset::INTERRUPT_LINE, &[0xff]);
        c
    }

    /// Sets a byte as the device presents it (not subject to the write rules).
    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    /// Sets a 16-bit field.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Sets a 32-bit field.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        if let Some(dst) = range(offset, data.len()).and_then(|r| self.bytes.get_mut(r)) {
            dst.copy_from_slice(data);
        }
    }

    /// Marks bits writable by software.
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = range(offset, mask.len()).and_then(|r| self.writable.get_mut(r)) {
            dst.copy_from_slice(mask);
        }
    }

    /// Marks bits that a written 1 clears.
    pub fn set_write_one_clears(&mut self, offset: usize, mask: &[u8]) {
        if let Some(dst) = range(offset, mask.len()).and_then(|r| self.write_one_clears.get_mut(r))
        {
            dst.copy_from_slice(mask);
        }
    }

    /// A guest read; bytes beyond the space read as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match range(offset, data.len()).and_then(|r| self.bytes.get(r)) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    /// A guest write: only writable bits change; write-1-to-clear bits clear where 1 is written.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(r) = range(offset, data.len()) else {
            return;
        };
        for (i, v) in r.zip(data) {
            if let (Some(b), Some(w), Some(c)) = (
                self.bytes.get(i).copied(),
                self.writable.get(i),
                self.write_one_clears.get(i),
            ) {
                let updated = ((b & !w) | (v & w)) & !(v & c);
                if let Some(dst) = self.bytes.get_mut(i) {
                    *dst = updated;
                }
            }
        }
    }

    /// Reads a 16-bit field.
    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0u8; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a 32-bit field.
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(offset::COMMAND)
    }

    /// Declares BAR `index` of `size` bytes (rounded up to a power of two, at least 16 for memory
    /// and 4 for I/O); a 64-bit BAR also takes `index + 1`. Its address is 0 until placed.
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) {
        let size = size
            .max(if kind == BarKind::Io { 4 } else { 16 })
            .next_power_of_two();
        let Some(slot) = self.bars.get_mut(index) else {
            return;
        };
        *slot = Some(Bar { kind, size });
        let at = offset::BAR0 + 4 * index;
        let (flags, low_bits): (u32, u32) = match kind {
            BarKind::Memory32 => (0, 0xf),
            BarKind::Memory64 => (0b100, 0xf),
            BarKind::Io => (1, 0x3),
        };
        self.set_u32(at, flags);
        // The address bits at and above the size are writable: all-ones reads back the size.
        let mask = !(size - 1);
        self.set_writable(at, &((mask as u32) & !low_bits).to_le_bytes());
        if kind == BarKind::Memory64 {
            self.set_writable(at + 4, &((mask >> 32) as u32).to_le_bytes());
        }
    }

    /// Sets BAR `index`'s address, as firmware would.
    pub fn place_bar(&mut self, index: usize, addr: u64) {
        let Some(Some(bar)) = self.bars.get(index).copied() else {
            return;
        };
        let at = offset::BAR0 + 4 * index;
        let low_bits = if bar.kind == BarKind::Io { 0x3 } else { 0xf };
        let flags = self.u32_at(at) & low_bits;
        self.set_u32(at, (addr as u32 & !low_bits) | flags);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(at + 4, (addr >> 32) as u32);
        }
    }

    /// BAR `index`: its kind, current address and size.
    pub fn bar(&self, index: usize) -> Option<(BarKind, u64, u64)> {
        let bar = (*self.bars.get(index)?)?;
        let at = offset::BAR0 + 4 * index;
        let low = u64::from(self.u32_at(at));
        let addr = match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 => low & !0xf,
            BarKind::Memory64 => (low & !0xf) | (u64::from(self.u32_at(at + 4)) << 32),
        };
        Some((bar.kind, addr, bar.size))
    }

    /// Appends a capability (`id`, then the next pointer, then `body`) to the list and returns its
    /// offset; `writable` marks bits of the body software may change.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_capability;
        self.set_bytes(at, &[id, 0]);
        self.set_bytes(at + 2, body);
        self.set_writable(at + 2, writable);
        if self.last_capability == 0 {
            self.set_u8(offset::CAPABILITIES, at as u8);
            let status = self.u16_at(offset::STATUS) | STATUS_CAPABILITIES;
            self.set_u16(offset::STATUS, status);
        } else {
            self.set_u8(self.last_capability + 1, at as u8);
        }
        self.last_capability = at;
        self.next_capability = (at + 2 + body.len() + 3) & !3;
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_only_and_command_bits_writable() {
        let mut c = ConfigSpace::new(0x1234, 0x11e8, 0x00ff00, 0x10);
        c.write(0, &[0xff; 4]);
        assert_eq!(c.u32_at(0), 0x11e8_1234);
        c.write(offset::COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.command(),
            command::IO | command::MEMORY | command::BUS_MASTER | command::INTX_DISABLE
        );
        assert_eq!(c.u32_at(offset::REVISION), 0x00ff_0010);
        let mut b = [0u8; 4];
        c.read(CONFIG_SIZE - 2, &mut b);
        assert_eq!(b, [0xff; 4], "beyond the space");
        c.write(CONFIG_SIZE - 1, &[0; 4]);
    }

    #[test]
    fn bars_size_like_hardware_and_keep_their_type_bits() {
        let mut c = ConfigSpace::new(1, 2, 0, 0);
        c.add_bar(0, BarKind::Memory32, 1 << 20);
        c.add_bar(2, BarKind::Memory64, 0x4000);
        c.add_bar(4, BarKind::Io, 0x20);
        c.place_bar(0, 0xc000_0000);
        c.place_bar(2, 0x1_0000_0000);
        assert_eq!(c.bar(0), Some((BarKind::Memory32, 0xc000_0000, 1 << 20)));
        assert_eq!(c.bar(2), Some((BarKind::Memory64, 0x1_0000_0000, 0x4000)));
        // Sizing: all-ones, read back, restore.
        for (bar, want) in [
            (0, 0xfff0_0000u32),
            (2, 0xffff_c004),
            (3, 0xffff_ffff),
            (4, 0xffff_ffe1),
        ] {
            let at = offset::BAR0 + 4 * bar;
            let old = c.u32_at(at);
            c.write(at, &0xffff_ffffu32.to_le_bytes());
            assert_eq!(c.u32_at(at), want, "BAR{bar}");
            c.write(at, &old.to_le_bytes());
            assert_eq!(c.u32_at(at), old);
        }
        assert_eq!(
            c.u32_at(offset::BAR0 + 4),
            0,
            "no BAR1: reads 0, ignores writes"
        );
    }

    #[test]
    fn capabilities_form_a_list() {
        let mut c = ConfigSpace::new(1, 2, 0, 0);
        let msi = c.add_capability(0x05, &[0; 12], &[0xff; 12]);
        let vendor = c.add_capability(0x09, &[3, 0xaa], &[]);
        assert_eq!(
            c.u16_at(offset::STATUS) & STATUS_CAPABILITIES,
            STATUS_CAPABILITIES
        );
        assert_eq!(usize::from(c.u16_at(offset::CAPABILITIES) as u8), msi);
        assert_eq!(c.u16_at(msi), 0x05 | ((vendor as u16) << 8));
        assert_eq!(c.u16_at(vendor), 0x09);
        c.write(msi + 2, &[0x12, 0x34]);
        assert_eq!(c.u16_at(msi + 2), 0x3412);
    }
}
