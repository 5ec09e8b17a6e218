//! An I/O APIC (the 82093AA register interface, version 0x20 with the EOI register of the ICH
//! family) for KVM's split irqchip, where the local APICs stay in the kernel and the I/O APIC is
//! the VMM's: 24 pins, each turned into an MSI by its redirection entry.
//!
//! Registers are reached indirectly: the guest writes a register index to IOREGSEL (offset 0x00)
//! and reads or writes it through IOWIN (0x10), 32 bits at a time; a write of a vector to the EOI
//! register (0x40) ends a level-triggered interrupt, as the local APIC's EOI broadcast does
//! ([`Ioapic::end_of_interrupt`]). Index 0 is the ID (bits 27:24), 1 the version, 2 the
//! arbitration ID, and 0x10 + 2n / 0x11 + 2n the low / high halves of pin n's entry.
//!
//! Pins: an edge-triggered pin interrupts on each rising edge; a level-triggered pin interrupts
//! while it is asserted, sets its remote IRR, and interrupts again only after an EOI of its vector
//! finds it still asserted. A masked pin remembers a pending request (edge seen, or level
//! asserted) and interrupts when unmasked, as KVM's and QEMU's I/O APICs do.
//!
//! Each pin's message goes out through [`MsiVectors`] (vector number = pin): `set_route` whenever
//! an entry changes, so the VMM can mirror it (KVM needs the level-triggered vectors in its routing
//! table to report their EOIs), and `trigger` to send it. An entry in the remappable format (bit 48,
//! for interrupt remapping) becomes a remappable MSI: the handle from bits 63:49 and 11, subhandle
//! invalid; a compatibility entry becomes the MSI the local APICs take directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use iommu::MsiMessage;

use crate::{BusDevice, InterruptLine, MsiVectors};
use iommu::spec::msi;

/// The pins.
pub const PINS: usize = 24;
/// The size of the register window.
pub const SIZE: u64 = 0x1000;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const EOI: u64 = 0x40;

const REG_ID: u32 = 0;
const REG_VERSION: u32 = 1;
const REG_ARBITRATION: u32 = 2;
const REG_TABLE: u32 = 0x10;
/// Version 0x20 (EOI register), highest entry index in bits 23:16.
const VERSION: u32 = 0x20 | ((PINS as u32 - 1) << 16);

/// Redirection entry bits.
mod entry {
    pub const VECTOR: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DEST_LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const REMAPPABLE: u64 = 1 << 48;
    pub const DEST_SHIFT: u32 = 56;
    /// Bits the guest cannot write: delivery status and remote IRR.
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
    /// The reset value: masked, everything else 0.
    pub const RESET: u64 = MASKED;
}

/// One pin: its redirection entry and its input.
#[derive(Clone, Copy, Debug)]
struct Pin {
    entry: u64,
    /// Whether the input is asserted.
    level: bool,
    /// A request not yet delivered: a rising edge, or an asserted level input while masked or
    /// waiting for an EOI.
    pending: bool,
}

impl Pin {
    fn level_triggered(&self) -> bool {
        self.entry & entry::LEVEL != 0
    }

    /// Takes the pending request if the entry lets it out now (unmasked; for a level-triggered pin,
    /// remote IRR clear, which it then sets).
    fn take_request(&mut self) -> bool {
        if !self.pending || self.entry & entry::MASKED != 0 {
            return false;
        }
        if self.level_triggered() {
            if self.entry & entry::REMOTE_IRR != 0 {
                return false;
            }
            self.entry |= entry::REMOTE_IRR;
        }
        self.pending = false;
        true
    }
}

/// The I/O APIC. The VMM puts it on the MMIO bus at 0xfec00000 and wires device interrupt lines
/// to [`Ioapic::set_level`].
pub struct Ioapic {
    id: u32,
    select: u32,
    pins: [Pin; PINS],
    out: Arc<dyn MsiVectors>,
}

impl std::fmt::Debug for Ioapic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ioapic")
            .field("id", &self.id)
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

/// The MSI that redirection entry `e` describes.
pub fn message(e: u64) -> MsiMessage {
    let level = e & entry::LEVEL != 0;
    // Data: vector, delivery mode, trigger mode (with the level asserted, bit 14, for level).
    let data = (e & (entry::VECTOR | (7 << entry::DELIVERY_MODE_SHIFT))) as u32
        | if level {
            msi::DATA_LEVEL | msi::DATA_ASSERT
        } else {
            0
        };
    let address = if e & entry::REMAPPABLE != 0 {
        // Remappable format (VT-d 5.1.5.1): handle[14:0] in bits 19:5, handle[15] in bit 2, bit 4
        // set; the handle comes from entry bits 63:49 and 11.
        let handle = ((e >> 49) & 0x7fff) | ((e >> 11) & 1) << 15;
        msi::remappable_address(handle as u16, false)
    } else {
        // Compatibility format: destination ID in bits 19:12, destination mode in bit 2.
        let dest = (e >> entry::DEST_SHIFT) & 0xff;
        0xfee0_0000
            | (dest << 12)
            | if e & entry::DEST_LOGICAL != 0 {
                msi::LOGICAL
            } else {
                0
            }
    };
    MsiMessage { address, data }
}

impl Ioapic {
    /// An I/O APIC with I/O APIC ID `id` (as the MADT gives it), every pin masked, sending through
    /// `out`.
    pub fn new(id: u8, out: Arc<dyn MsiVectors>) -> Self {
        let pin = Pin {
            entry: entry::RESET,
            level: false,
            pending: false,
        };
        Self {
            id: u32::from(id) << 24,
            select: 0,
            pins: [pin; PINS],
            out,
        }
    }

    /// Pin `pin`'s redirection entry.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.pins.get(pin).map(|p| p.entry)
    }

    /// Drives pin `pin`'s input. Pins outside 0-23 are ignored.
    pub fn set_level(&mut self, pin: usize, asserted: bool) {
        let Some(p) = self.pins.get_mut(pin) else {
            return;
        };
        let rising = asserted && !p.level;
        p.level = asserted;
        if p.level_triggered() {
            p.pending = asserted;
        } else if rising {
            p.pending = true;
        }
        if p.take_request() {
            self.out.trigger(pin as u16);
        }
    }

    /// An EOI for `vector` (the local APIC's broadcast, or the EOI register): every
    /// level-triggered pin with that vector leaves its remote IRR, and interrupts again if its
    /// input is still asserted.
    pub fn end_of_interrupt(&mut self, vector: u8) {
        for (pin, p) in self.pins.iter_mut().enumerate() {
            if p.entry & entry::REMOTE_IRR != 0 && (p.entry & entry::VECTOR) as u8 == vector {
                p.entry &= !entry::REMOTE_IRR;
                p.pending = p.level && p.level_triggered();
                if p.take_request() {
                    self.out.trigger(pin as u16);
                }
            }
        }
    }

    /// The pin whose entry half register `index` is, and whether it is the high half.
    fn table_index(index: u32) -> Option<(usize, bool)> {
        let i = index.checked_sub(REG_TABLE)?;
        let pin = (i / 2) as usize;
        (pin < PINS).then_some((pin, i % 2 == 1))
    }

    fn read_register(&self, index: u32) -> u32 {
        match index {
            REG_ID | REG_ARBITRATION => self.id,
            REG_VERSION => VERSION,
            _ => match Self::table_index(index)
                .and_then(|(pin, high)| Some((self.entry(pin)?, high)))
            {
                Some((e, true)) => (e >> 32) as u32,
                Some((e, false)) => e as u32,
                None => 0,
            },
        }
    }

    fn write_register(&mut self, index: u32, value: u32) {
        if index == REG_ID {
            self.id = value & (0xf << 24);
            return;
        }
        // The version and arbitration ID are read-only; other indexes do not exist.
        let Some((pin, high)) = Self::table_index(index) else {
            return;
        };
        let Some(p) = self.pins.get_mut(pin) else {
            return;
        };
        let old = p.entry;
        let written = if high {
            (old & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (old & !0xffff_ffff) | u64::from(value)
        };
        p.entry = (written & !entry::READ_ONLY) | (old & entry::READ_ONLY);
        if !p.level_triggered() {
            // An edge-triggered pin has no remote IRR.
            p.entry &= !entry::REMOTE_IRR;
        } else if old & entry::LEVEL == 0 {
            // A level input already asserted when the pin becomes level-triggered is a request.
            p.pending = p.level;
        }
        // Only a new message rewrites the route (in KVM, the whole routing table): masking and
        // unmasking, which Linux does often, leave it alone.
        let new = message(p.entry);
        let fire = p.take_request();
        if new != message(old) {
            self.out.set_route(pin as u16, new);
        }
        if fire {
            self.out.trigger(pin as u16);
        }
    }
}

impl BusDevice for Ioapic {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (IOREGSEL, 4) => self.select,
            (IOWIN, 4) => self.read_register(self.select),
            _ => 0,
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = value.to_le_bytes().get(i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => self.write_register(self.select, value),
            EOI => self.end_of_interrupt(value as u8),
            _ => {}
        }
    }
}

/// An I/O APIC shared between the MMIO bus (the guest's accesses), the vCPUs (EOIs) and the
/// devices (their interrupt lines).
pub type SharedIoapic = Arc<Mutex<Ioapic>>;

/// One input pin of the I/O APIC, as an ISA device drives it (COM1's IRQ 4, say).
#[derive(Clone, Debug)]
pub struct IoapicPin {
    ioapic: SharedIoapic,
    pin: usize,
}

impl IoapicPin {
    pub fn new(ioapic: SharedIoapic, pin: usize) -> Self {
        Self { ioapic, pin }
    }

    /// Drives the pin.
    pub fn set_level(&self, asserted: bool) {
        self.ioapic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_level(self.pin, asserted);
    }

    /// A rising and a falling edge: one interrupt of an edge-triggered pin.
    pub fn pulse(&self) {
        let mut ioapic = self.ioapic.lock().unwrap_or_else(PoisonError::into_inner);
        ioapic.set_level(self.pin, true);
        ioapic.set_level(self.pin, false);
    }
}

/// A PCI INTx line on an I/O APIC pin that other devices may share: the pin is asserted while any
/// of its devices asserts it. The count of asserting devices lives under a lock that is held while
/// the pin changes, so a raise and a lower from two devices cannot land reversed.
#[derive(Debug)]
pub struct IoapicLine {
    pin: IoapicPin,
    asserted: AtomicBool,
    shared: Arc<Mutex<u32>>,
}

impl IoapicLine {
    /// A device's line on `pin`; `shared` is the pin's count, common to all devices on it.
    pub fn new(pin: IoapicPin, shared: Arc<Mutex<u32>>) -> Self {
        Self {
            pin,
            asserted: AtomicBool::new(false),
            shared,
        }
    }
}

impl InterruptLine for IoapicLine {
    fn set_level(&self, asserted: bool) {
        let mut count = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if self.asserted.swap(asserted, Ordering::SeqCst) == asserted {
            return;
        }
        *count = if asserted {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
        if (asserted && *count == 1) || (!asserted && *count == 0) {
            self.pin.set_level(asserted);
        }
    }
}

/// Test doubles: an [`MsiVectors`] that records, and an unmasked edge-triggered pin.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::{Arc, Mutex};

    use iommu::MsiMessage;

    use super::{Ioapic, IoapicPin};
    use crate::MsiVectors;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Out {
        Route(u16, MsiMessage),
        Trigger(u16),
    }

    #[derive(Default)]
    pub struct Recorder(Mutex<Vec<Out>>);

    impl MsiVectors for Recorder {
        fn set_route(&self, vector: u16, msg: MsiMessage) {
            self.0.lock().unwrap().push(Out::Route(vector, msg));
        }
        fn trigger(&self, vector: u16) {
            self.0.lock().unwrap().push(Out::Trigger(vector));
        }
    }

    impl Recorder {
        pub fn take(&self) -> Vec<Out> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
        /// How many interrupts were sent since the last look.
        pub fn triggers(&self) -> usize {
            self.take()
                .iter()
                .filter(|o| matches!(o, Out::Trigger(_)))
                .count()
        }
    }

    /// Pin `pin` of a new I/O APIC, unmasked and edge-triggered (vector 0x30 + pin), and what it
    /// sends.
    pub fn edge_pin(pin: usize) -> (IoapicPin, Arc<Recorder>) {
        let out = Arc::new(Recorder::default());
        let mut io = Ioapic::new(0, out.clone());
        io.write_register(super::REG_TABLE + 2 * pin as u32, 0x30 + pin as u32);
        out.take();
        (IoapicPin::new(Arc::new(Mutex::new(io)), pin), out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::testing::{Out, Recorder};
    use super::*;

    fn ioapic() -> (Ioapic, Arc<Recorder>) {
        let out = Arc::new(Recorder::default());
        (Ioapic::new(2, out.clone()), out)
    }

    fn write(io: &mut Ioapic, index: u32, value: u32) {
        io.write(0, IOREGSEL, &index.to_le_bytes());
        io.write(0, IOWIN, &value.to_le_bytes());
    }

    fn read(io: &mut Ioapic, index: u32) -> u32 {
        io.write(0, IOREGSEL, &index.to_le_bytes());
        let mut data = [0; 4];
        io.read(0, IOWIN, &mut data);
        u32::from_le_bytes(data)
    }

    fn program(io: &mut Ioapic, pin: u32, e: u64) {
        write(io, REG_TABLE + 2 * pin + 1, (e >> 32) as u32);
        write(io, REG_TABLE + 2 * pin, e as u32);
    }

    const LEVEL_VECTOR_0X41: u64 = 0x41 | entry::LEVEL | (1 << entry::DEST_SHIFT);

    #[test]
    fn identification_registers_and_reset_state() {
        let (mut io, out) = ioapic();
        assert_eq!(read(&mut io, REG_ID), 2 << 24);
        assert_eq!(read(&mut io, REG_VERSION), 0x0017_0020);
        write(&mut io, REG_ID, 0xffff_ffff);
        assert_eq!(read(&mut io, REG_ID), 0x0f00_0000);
        assert_eq!(read(&mut io, REG_ARBITRATION), 0x0f00_0000);
        write(&mut io, REG_VERSION, 0);
        assert_eq!(read(&mut io, REG_VERSION), 0x0017_0020);
        for pin in 0..PINS as u32 {
            assert_eq!(
                read(&mut io, REG_TABLE + 2 * pin),
                0x1_0000,
                "pin {pin} masked"
            );
            assert_eq!(read(&mut io, REG_TABLE + 2 * pin + 1), 0);
        }
        // Past the table, and the select register itself.
        assert_eq!(read(&mut io, REG_TABLE + 2 * PINS as u32), 0);
        let mut data = [0; 4];
        io.read(0, IOREGSEL, &mut data);
        assert_eq!(u32::from_le_bytes(data), REG_TABLE + 2 * PINS as u32);
        assert!(out.take().is_empty());
    }

    #[test]
    fn accesses_other_than_32_bits_are_ignored() {
        let (mut io, _) = ioapic();
        io.write(0, IOREGSEL, &[REG_TABLE as u8]);
        io.write(0, IOREGSEL, &(REG_VERSION as u64).to_le_bytes());
        let mut data = [0xaa; 8];
        io.read(0, IOWIN, &mut data);
        assert_eq!(data, [0; 8]);
        assert_eq!(read(&mut io, REG_VERSION), 0x0017_0020);
        io.write(0, IOREGSEL, &REG_TABLE.to_le_bytes());
        io.write(0, IOWIN, &[0, 0]);
        assert_eq!(io.entry(0), Some(entry::MASKED));
    }

    #[test]
    fn an_edge_pin_interrupts_once_per_rising_edge() {
        let (mut io, out) = ioapic();
        program(&mut io, 4, 0x30 | (1 << entry::DEST_SHIFT));
        // The high half's write, then the low half's: the last route is the entry's.
        assert_eq!(
            out.take().last(),
            Some(&Out::Route(
                4,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x30
                }
            ))
        );
        io.set_level(4, true);
        io.set_level(4, true);
        assert_eq!(out.take(), [Out::Trigger(4)]);
        io.set_level(4, false);
        assert_eq!(out.triggers(), 0);
        io.set_level(4, true);
        assert_eq!(out.triggers(), 1);
        // An EOI changes nothing for an edge pin.
        io.end_of_interrupt(0x30);
        assert_eq!(out.triggers(), 0);
        assert_eq!(io.entry(4), Some(0x30 | (1 << entry::DEST_SHIFT)));
    }

    #[test]
    fn an_edge_seen_while_masked_is_delivered_on_unmask() {
        let (mut io, out) = ioapic();
        program(&mut io, 1, 0x31 | entry::MASKED);
        io.set_level(1, true);
        io.set_level(1, false);
        assert_eq!(out.triggers(), 0);
        program(&mut io, 1, 0x31);
        assert_eq!(out.triggers(), 1);
        program(&mut io, 1, 0x32);
        assert_eq!(out.triggers(), 0, "delivered once only");
    }

    #[test]
    fn a_level_pin_waits_for_the_eoi_of_its_vector() {
        let (mut io, out) = ioapic();
        program(&mut io, 10, LEVEL_VECTOR_0X41);
        assert_eq!(
            out.take().last(),
            Some(&Out::Route(
                10,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0xc041
                }
            ))
        );
        io.set_level(10, true);
        assert_eq!(out.triggers(), 1);
        assert_eq!(io.entry(10), Some(LEVEL_VECTOR_0X41 | entry::REMOTE_IRR));
        io.set_level(10, true);
        io.end_of_interrupt(0x42);
        assert_eq!(out.triggers(), 0, "no EOI of its vector yet");
        // Still asserted at the EOI: again.
        io.end_of_interrupt(0x41);
        assert_eq!(out.triggers(), 1);
        // Deasserted before the EOI: remote IRR clears, nothing more.
        io.set_level(10, false);
        io.write(0, EOI, &0x41u32.to_le_bytes());
        assert_eq!(out.triggers(), 0);
        assert_eq!(io.entry(10), Some(LEVEL_VECTOR_0X41));
        // The guest cannot write remote IRR.
        program(
            &mut io,
            10,
            LEVEL_VECTOR_0X41 | entry::REMOTE_IRR | entry::DELIVERY_STATUS,
        );
        assert_eq!(io.entry(10), Some(LEVEL_VECTOR_0X41));
    }

    #[test]
    fn a_level_input_asserted_while_masked_interrupts_on_unmask() {
        let (mut io, out) = ioapic();
        program(&mut io, 3, LEVEL_VECTOR_0X41 | entry::MASKED);
        io.set_level(3, true);
        assert_eq!(out.triggers(), 0);
        program(&mut io, 3, LEVEL_VECTOR_0X41);
        assert_eq!(out.triggers(), 1);
        // Switched to edge while its remote IRR is set: the bit goes.
        program(&mut io, 3, 0x41);
        assert_eq!(io.entry(3), Some(0x41));
        out.take();
        // Back to level while the input is still asserted: that is a request.
        program(&mut io, 3, LEVEL_VECTOR_0X41);
        assert_eq!(out.triggers(), 1);
    }

    #[test]
    fn messages_for_logical_destinations_delivery_modes_and_the_remappable_format() {
        // Logical destination 0x0f, lowest priority (1), vector 0x50.
        let e = 0x50 | (1 << entry::DELIVERY_MODE_SHIFT) | entry::DEST_LOGICAL | (0x0f << 56);
        assert_eq!(
            message(e),
            MsiMessage {
                address: 0xfee0_f004,
                data: 0x150
            }
        );
        // Remappable: interrupt index 0x1234 in bits 63:49, bit 15 of the handle in bit 11.
        let e = entry::REMAPPABLE | (0x1234 << 49) | (1 << 11) | 0x60 | entry::LEVEL;
        assert_eq!(
            message(e),
            MsiMessage {
                address: 0xfee0_0000 | (0x1234 << 5) | (1 << 4) | (1 << 2),
                data: 0xc060
            }
        );
    }

    #[test]
    fn masking_and_unmasking_keep_the_route() {
        let (mut io, out) = ioapic();
        program(&mut io, 7, 0x37);
        out.take();
        program(&mut io, 7, 0x37 | entry::MASKED);
        program(&mut io, 7, 0x37);
        assert!(out.take().is_empty(), "no route rewrite for a mask toggle");
        program(&mut io, 7, 0x38);
        assert_eq!(
            out.take(),
            [Out::Route(
                7,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x38
                }
            )]
        );
    }

    #[test]
    fn pins_out_of_range_are_ignored() {
        let (mut io, out) = ioapic();
        io.set_level(PINS, true);
        io.set_level(usize::MAX, true);
        assert_eq!(io.entry(PINS), None);
        assert!(out.take().is_empty());
    }

    /// Runs guest register traffic and pin changes: `kind` picks the action, `a` and `b` its
    /// operands. Register selects and window writes are mostly well-formed 32-bit accesses, so
    /// entries really get programmed (about half unmasked) and pins deliver.
    fn hostile(ops: &[(u8, u64, u32, bool)]) -> (Ioapic, Vec<Out>) {
        let (mut io, out) = ioapic();
        for &(kind, a, b, level) in ops {
            match kind {
                0 => io.write(0, IOREGSEL, &((a % 0x40) as u32).to_le_bytes()),
                1 => io.write(0, IOWIN, &b.to_le_bytes()),
                2 => io.write(0, a % 0x50, &b.to_le_bytes()[..(a as usize / 0x50) % 5]),
                3 => {
                    let mut data = vec![0; (a as usize / 0x50) % 9];
                    io.read(0, a % 0x50, &mut data);
                }
                4 | 5 => io.set_level((a % 30) as usize, level),
                _ => {
                    // The vector of some pin's entry, or any.
                    let vector = io.entry((a % 24) as usize).map_or(b, |e| e as u32);
                    io.end_of_interrupt(if level { vector as u8 } else { b as u8 });
                }
            }
        }
        let sent = out.take();
        (io, sent)
    }

    proptest! {
        /// Whatever the guest writes and the pins do, no panic, and remote IRR only on
        /// level-triggered pins that were delivered.
        #[test]
        fn hostile_register_traffic(ops in proptest::collection::vec(
            (0u8..7, any::<u64>(), any::<u32>(), any::<bool>()), 0..300)) {
            let (io, sent) = hostile(&ops);
            for o in &sent {
                let (Out::Trigger(pin) | Out::Route(pin, _)) = *o;
                prop_assert!(usize::from(pin) < PINS);
            }
            for pin in 0..PINS {
                let e = io.entry(pin).unwrap();
                if e & entry::REMOTE_IRR != 0 {
                    // Set only by a delivery of a level-triggered pin.
                    prop_assert!(e & entry::LEVEL != 0, "pin {pin}: {e:#x}");
                    prop_assert!(sent.contains(&Out::Trigger(pin as u16)), "pin {pin}: {e:#x}");
                }
                prop_assert_eq!(e & entry::DELIVERY_STATUS, 0);
            }
        }
    }

    /// The traffic the property test generates does program entries and deliver, so its checks
    /// are not empty.
    #[test]
    fn hostile_traffic_programs_entries_and_delivers() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let ops: Vec<_> = (0..3000)
            .map(|_| {
                let (k, a, b) = (next(), next(), next());
                ((k % 7) as u8, a, b as u32, k & 0x100 != 0)
            })
            .collect();
        let (io, sent) = hostile(&ops);
        let triggers = sent.iter().filter(|o| matches!(o, Out::Trigger(_))).count();
        assert!(triggers > 10, "{triggers} deliveries");
        assert!(
            (0..PINS).any(|p| io.entry(p).unwrap() & entry::REMOTE_IRR != 0)
                || sent.iter().any(|o| matches!(o, Out::Route(_, _))),
            "no entry programmed"
        );
    }

    #[test]
    fn a_shared_line_stays_asserted_while_any_device_asserts_it() {
        let (io, out) = ioapic();
        let io = Arc::new(Mutex::new(io));
        program(&mut io.lock().unwrap(), 16, 0x45 | entry::LEVEL);
        out.take();
        let count = Arc::new(Mutex::new(0));
        let a = IoapicLine::new(IoapicPin::new(io.clone(), 16), count.clone());
        let b = IoapicLine::new(IoapicPin::new(io.clone(), 16), count);
        a.set_level(true);
        b.set_level(true);
        a.set_level(true);
        assert_eq!(out.triggers(), 1);
        a.set_level(false);
        io.lock().unwrap().end_of_interrupt(0x45);
        assert_eq!(out.triggers(), 1, "b still asserts the pin");
        b.set_level(false);
        io.lock().unwrap().end_of_interrupt(0x45);
        assert_eq!(out.triggers(), 0);
        // An edge pin pulsed by an ISA device.
        program(&mut io.lock().unwrap(), 4, 0x34);
        out.take();
        let com1 = IoapicPin::new(io.clone(), 4);
        com1.pulse();
        com1.pulse();
        assert_eq!(out.triggers(), 2);
    }
}
