//! Interrupt remapping (`--iommu --device edu`, any `--cpus`): the unit set up as Linux sets it up
//! (`rt::vtd::Irt`), then the edu device's MSI and its INTx pin through remapping table entries:
//! a remapped MSI with a subhandle, an IEC invalidation changing the delivered vector, a
//! non-present entry and a failed source-id check recorded as faults with nothing delivered,
//! compatibility-format MSIs blocked (and, outside extended interrupt mode, let through by CFI),
//! remappable I/O APIC entries (edu INTx), edge (as Linux programs them, ended by the I/O APIC's
//! EOI register) and level-triggered (ended by the local APIC's EOI), and every AP reached through
//! an entry's destination (32-bit x2APIC format with `eim=on`, where the id plus 256 reaches no
//! CPU; the local APICs stay in xAPIC mode).
//!
//! Command line: `eim=on|off cpus=N` (what the unit and the MADT must offer).

#![no_std]
#![no_main]

use guests::rt::acpi::Madt;
use guests::rt::edu::Edu;
use guests::rt::pci::{config_read32, config_write32};
use guests::rt::vtd::{self, Invalidation, Irt, Options, Vtd, irte, reason};
use guests::rt::{self, ioapic, lapic, smp};
use guests::{fail, println};

guests::entry!(main);

const MSI_VECTOR: u8 = 0x50;
const NEW_VECTOR: u8 = 0x52;
const COMPAT_VECTOR: u8 = 0x53;
const INTX_VECTOR: u8 = 0x54;
const LEVEL_VECTOR: u8 = 0x55;
const AP_VECTOR: u8 = 0x58;

/// Interrupt table entries the program uses.
const MSI_HANDLE: u16 = 0x10;
const MSI_SUBHANDLE: u16 = 1;
const ABSENT_ENTRY: u16 = 0x20;
const CHECKED_ENTRY: u16 = 0x21;
const INTX_ENTRY: u16 = 0x30;
const LEVEL_ENTRY: u16 = 0x31;
const AP_ENTRIES: u16 = 0x40;

/// How long to wait for an interrupt that should come (spins), and for one that should not.
const ARRIVES: u64 = 100_000_000;
const STAYS_AWAY: u64 = 2_000_000;

/// The edu device with its MSI capability.
struct Device {
    edu: Edu,
    cap: u32,
}

impl Device {
    /// Programs the MSI address and data and enables MSI.
    fn msi(&self, address: u32, data: u32) {
        let (dev, cap) = (self.edu.dev, self.cap);
        config_write32(dev, cap + 4, address);
        config_write32(dev, cap + 8, 0);
        config_write32(dev, cap + 12, data);
        config_write32(dev, cap, config_read32(dev, cap) | (1 << 16));
    }

    fn msi_off(&self) {
        let (dev, cap) = (self.edu.dev, self.cap);
        config_write32(dev, cap, config_read32(dev, cap) & !(1 << 16));
    }

    /// Raises the device's interrupt and acknowledges it (one MSI per raise).
    fn pulse(&self) {
        self.edu.w32(0x60, 0x1);
        self.edu.w32(0x64, 0x1);
    }
}

/// Raises an MSI and waits for `vector`; fails with `what` otherwise.
fn expect_msi(dev: &Device, vector: u8, what: &str) {
    let before = rt::interrupt_count(vector);
    rt::sti();
    dev.pulse();
    let arrived = rt::wait_for_interrupt(vector, before, ARRIVES);
    rt::cli();
    if !arrived {
        fail!("{}: vector {:#x} not delivered", what, vector);
    }
}

/// Raises an MSI that the unit must block: the fault event arrives, none of `vectors` does, and
/// the pending fault record says `reason` for `index` and the edu device. Clears the record.
fn expect_blocked(v: &Vtd, dev: &Device, vectors: &[u8], reason: u8, index: u16, what: &str) {
    let counts: [u32; 4] =
        core::array::from_fn(|i| vectors.get(i).map_or(0, |&x| rt::interrupt_count(x)));
    let faults = rt::interrupt_count(vtd::FAULT_VECTOR);
    rt::sti();
    dev.pulse();
    let event = rt::wait_for_interrupt(vtd::FAULT_VECTOR, faults, ARRIVES);
    for _ in 0..STAYS_AWAY {
        core::hint::spin_loop();
    }
    rt::cli();
    if !event {
        fail!("{}: no fault event", what);
    }
    for (i, &vector) in vectors.iter().enumerate() {
        if rt::interrupt_count(vector) != counts[i] {
            fail!("{}: vector {:#x} delivered although blocked", what, vector);
        }
    }
    let Some((record, fault)) = v.pending_fault() else {
        fail!("{}: fault event but no pending record", what)
    };
    let got_index = (fault.address >> 48) as u16;
    if fault.reason != reason
        || got_index != index
        || fault.source_id != dev.edu.source_id()
        || fault.read
    {
        fail!(
            "{}: record {:?} index {:#x}, want reason {:#x} index {:#x} source {:#x}",
            what,
            fault,
            got_index,
            reason,
            index,
            dev.edu.source_id()
        );
    }
    v.clear_fault(record);
    if v.pending_fault().is_some() {
        fail!("{}: a second fault recorded", what);
    }
    println!(
        "{}: blocked, fault reason {:#x} index {:#x} source 00:{:02x}.0",
        what, reason, index, dev.edu.dev
    );
}

fn main() -> ! {
    let eim = match rt::cmdline_value("eim") {
        Some("on") => true,
        Some("off") => false,
        v => fail!("eim={:?}: expected on or off", v),
    };
    let cpus: u32 = match rt::cmdline_value("cpus").map(str::parse) {
        Some(Ok(n)) if n >= 1 => n,
        v => fail!("cpus={:?}: expected a count", v),
    };

    let (flags, scope) = vtd::dmar_interrupt_info();
    let Some((ioapic_id, ioapic_sid)) = scope else {
        fail!("DMAR: no I/O APIC device scope")
    };
    if flags & 1 == 0 || flags & 2 != 0 {
        fail!(
            "DMAR flags {:#x}: want INTR_REMAP without X2APIC_OPT_OUT",
            flags
        );
    }
    let Some(madt) = Madt::find() else {
        fail!("no MADT")
    };
    if !madt.ioapic_ids().any(|id| id == ioapic_id) {
        fail!(
            "DMAR I/O APIC scope names id {}, which the MADT lacks",
            ioapic_id
        );
    }
    println!(
        "dmar: INTR_REMAP, I/O APIC {} at source-id {:02x}:{:02x}.{}",
        ioapic_id,
        ioapic_sid >> 8,
        (ioapic_sid >> 3) & 0x1f,
        ioapic_sid & 7
    );

    let opts = Options {
        levels: 4,
        shift: 12,
        inv: Invalidation::Queued,
    };
    let Some(mut v) = Vtd::start(&opts) else {
        fail!("no DMAR table")
    };
    if !v.has_ir() || v.has_eim() != eim {
        fail!(
            "ECAP {:#x}: IR {}, EIM {} (want {})",
            v.ecap,
            v.has_ir(),
            v.has_eim(),
            eim
        );
    }
    let irt = v.enable_interrupt_remapping(eim);
    println!(
        "ir: enabled, {} entries, {} destinations",
        Irt::ENTRIES,
        if eim { "x2APIC" } else { "xAPIC" }
    );

    let Some(edu) = Edu::find() else {
        fail!("no edu device (1234:11e8)")
    };
    let cap = config_read32(edu.dev, 0x34) & 0xff;
    if config_read32(edu.dev, cap) & 0xff != 0x05 {
        fail!("no MSI capability at {:#x}", cap);
    }
    let dev = Device { edu, cap };
    let bsp = lapic::id();

    // A remapped MSI: handle + subhandle name the entry; the entry gives vector and CPU.
    let entry = MSI_HANDLE + MSI_SUBHANDLE;
    irt.set(entry, irt.entry(MSI_VECTOR, bsp), 0);
    let (address, data) = Irt::msi(MSI_HANDLE, Some(MSI_SUBHANDLE));
    dev.msi(address, data);
    expect_msi(&dev, MSI_VECTOR, "remapped msi");
    println!(
        "msi: remapped through entry {:#x} to vector {:#x}",
        entry, MSI_VECTOR
    );

    // A new vector in the entry: the unit may keep using the cached one until the entry's
    // invalidation, after which only the new one arrives.
    irt.set(entry, irt.entry(NEW_VECTOR, bsp), 0);
    let (old, new) = (
        rt::interrupt_count(MSI_VECTOR),
        rt::interrupt_count(NEW_VECTOR),
    );
    expect_any(&dev, &[MSI_VECTOR, NEW_VECTOR], "changed entry");
    let cached = rt::interrupt_count(MSI_VECTOR) != old;
    if cached == (rt::interrupt_count(NEW_VECTOR) != new) {
        fail!("changed entry: delivered on both vectors or neither");
    }
    v.flush_iec(Some((entry, 0)));
    let old = rt::interrupt_count(MSI_VECTOR);
    expect_msi(&dev, NEW_VECTOR, "after the entry's invalidation");
    if rt::interrupt_count(MSI_VECTOR) != old {
        fail!("the old vector still arrives after the invalidation");
    }
    println!(
        "iec: before the invalidation vector {:#x} ({}), after it {:#x}",
        if cached { MSI_VECTOR } else { NEW_VECTOR },
        if cached { "cached" } else { "not cached" },
        NEW_VECTOR
    );

    // A non-present entry: a fault, no interrupt.
    let (address, data) = Irt::msi(ABSENT_ENTRY, None);
    dev.msi(address, data);
    expect_blocked(
        &v,
        &dev,
        &[NEW_VECTOR],
        reason::IRTE_NOT_PRESENT,
        ABSENT_ENTRY,
        "absent entry",
    );

    // Source-id verification: an entry for another requester blocks edu; fixed, it passes.
    let wrong = u64::from(dev.edu.source_id() ^ 0x8);
    irt.set(
        CHECKED_ENTRY,
        irt.entry(MSI_VECTOR, bsp),
        irte::SVT_SID | wrong,
    );
    let (address, data) = Irt::msi(CHECKED_ENTRY, None);
    dev.msi(address, data);
    expect_blocked(
        &v,
        &dev,
        &[MSI_VECTOR],
        reason::SOURCE_ID,
        CHECKED_ENTRY,
        "other requester's entry",
    );
    irt.set(
        CHECKED_ENTRY,
        irt.entry(MSI_VECTOR, bsp),
        irte::SVT_SID | u64::from(dev.edu.source_id()),
    );
    v.flush_iec(Some((CHECKED_ENTRY, 0)));
    expect_msi(&dev, MSI_VECTOR, "own entry");
    println!(
        "sid: entry {:#x} verified against 00:{:02x}.0",
        CHECKED_ENTRY, dev.edu.dev
    );

    // Compatibility format: blocked while CFI is clear; with CFI set, it passes outside extended
    // interrupt mode and stays blocked in it.
    dev.msi(0xfee0_0000 | (bsp << 12), u32::from(COMPAT_VECTOR));
    expect_blocked(
        &v,
        &dev,
        &[COMPAT_VECTOR],
        reason::COMPATIBILITY_BLOCKED,
        0,
        "compatibility msi",
    );
    v.command(vtd::gcmd::CFI, true);
    if eim {
        expect_blocked(
            &v,
            &dev,
            &[COMPAT_VECTOR],
            reason::COMPATIBILITY_BLOCKED,
            0,
            "compatibility msi with CFI in x2APIC mode",
        );
    } else {
        expect_msi(&dev, COMPAT_VECTOR, "compatibility msi with CFI");
        println!("compatibility msi with CFI: delivered");
    }
    v.command(vtd::gcmd::CFI, false);

    // The I/O APIC: edu's INTx pin in remappable format, level-triggered, the pin number in the
    // vector field and an edge entry (as Linux programs them); the handler's EOI does not reach
    // the pin (its vector field is not the delivered vector), the EOI register does.
    dev.msi_off();
    let pin = config_read32(dev.edu.dev, 0x3c) & 0xff;
    irt.set(
        INTX_ENTRY,
        irt.entry(INTX_VECTOR, bsp),
        irte::SVT_SID | u64::from(ioapic_sid),
    );
    let (low, high) = Irt::ioapic_entry(INTX_ENTRY, pin as u8, ioapic::LEVEL);
    ioapic::write(0x11 + 2 * pin, high);
    ioapic::write(0x10 + 2 * pin, low);
    let before = rt::interrupt_count(INTX_VECTOR);
    dev.edu.w32(0x60, 0x1);
    rt::sti();
    let arrived = rt::wait_for_interrupt(INTX_VECTOR, before, ARRIVES);
    rt::cli();
    if !arrived {
        fail!("no remapped INTx on I/O APIC pin {}", pin);
    }
    dev.edu.w32(0x64, 0x1);
    if ioapic::entry(pin) & ioapic::REMOTE_IRR == 0 {
        fail!(
            "pin {}: remote IRR clear before the EOI register write",
            pin
        );
    }
    ioapic::eoi(pin as u8);
    if ioapic::entry(pin) & ioapic::REMOTE_IRR != 0 {
        fail!(
            "pin {}: remote IRR still set after the EOI register write",
            pin
        );
    }
    if rt::interrupt_count(INTX_VECTOR) - before != 1 {
        fail!(
            "pin {}: INTx delivered {} times",
            pin,
            rt::interrupt_count(INTX_VECTOR) - before
        );
    }
    println!(
        "ioapic: pin {} remapped through entry {:#x} to vector {:#x}; EOI register clears remote IRR",
        pin, INTX_ENTRY, INTX_VECTOR
    );

    // A level-triggered entry with the delivered vector in the I/O APIC's vector field: the local
    // APIC's EOI for the remapped vector reaches the pin (KVM's EOI exit) and clears remote IRR.
    irt.set(
        LEVEL_ENTRY,
        irt.entry(LEVEL_VECTOR, bsp) | irte::TM,
        irte::SVT_SID | u64::from(ioapic_sid),
    );
    let (low, high) = Irt::ioapic_entry(LEVEL_ENTRY, LEVEL_VECTOR, ioapic::LEVEL);
    ioapic::write(0x11 + 2 * pin, high);
    ioapic::write(0x10 + 2 * pin, low);
    let before = rt::interrupt_count(LEVEL_VECTOR);
    dev.edu.w32(0x60, 0x1);
    dev.edu.w32(0x64, 0x1);
    if ioapic::entry(pin) & ioapic::REMOTE_IRR == 0 {
        fail!("pin {}: level entry not delivered (remote IRR clear)", pin);
    }
    rt::sti();
    let arrived = rt::wait_for_interrupt(LEVEL_VECTOR, before, ARRIVES);
    rt::cli();
    if !arrived || rt::interrupt_count(LEVEL_VECTOR) - before != 1 {
        fail!(
            "pin {}: level entry delivered {} times",
            pin,
            rt::interrupt_count(LEVEL_VECTOR) - before
        );
    }
    if ioapic::entry(pin) & ioapic::REMOTE_IRR != 0 {
        fail!(
            "pin {}: remote IRR still set after the local APIC's EOI",
            pin
        );
    }
    ioapic::write(0x10 + 2 * pin, ioapic::MASKED);
    println!(
        "ioapic: pin {} level-triggered through entry {:#x} to vector {:#x}; the local APIC's EOI clears remote IRR",
        pin, LEVEL_ENTRY, LEVEL_VECTOR
    );

    // Every AP through its own entry: the AP wakes, the vector arrives, no other AP wakes.
    let mut ids = [0u32; 8];
    let mut n = 0;
    for p in madt.processors().filter(|p| p.enabled()) {
        if n == ids.len() || p.apic_id as usize >= rt::sys::MAX_APIC_IDS {
            fail!("this program handles up to 8 CPUs with APIC ids below 256");
        }
        ids[n] = p.apic_id;
        n += 1;
    }
    let ids = &ids[..n];
    if n as u32 != cpus || !ids.contains(&bsp) {
        fail!(
            "MADT lists {:?}, boot CPU {}; cmdline says cpus={}",
            ids,
            bsp,
            cpus
        );
    }
    let aps = || ids.iter().copied().filter(|&id| id != bsp);
    if cpus > 1 {
        let sipi = smp::install_trampoline();
        for id in aps() {
            smp::start_ap(id, sipi);
        }
        for _ in 0..ARRIVES {
            if smp::ap_count() == cpus - 1 {
                break;
            }
        }
        if smp::ap_count() != cpus - 1 {
            fail!("{} of {} APs came online", smp::ap_count(), cpus - 1);
        }
    }
    for id in aps() {
        let index = AP_ENTRIES + id as u16;
        irt.set(index, irt.entry(AP_VECTOR, id), 0);
        let (address, data) = Irt::msi(index, None);
        dev.msi(address, data);
        let wakeups: [u32; 8] =
            core::array::from_fn(|i| smp::wakeups(ids.get(i).copied().unwrap_or(0)));
        let woke = |i: usize| smp::wakeups(ids[i]) != wakeups[i];
        let before = rt::interrupt_count(AP_VECTOR);
        dev.pulse();
        if !rt::wait_for_interrupt(AP_VECTOR, before, ARRIVES) {
            fail!("cpu {}: vector {:#x} not delivered", id, AP_VECTOR);
        }
        let target = ids.iter().position(|&x| x == id).unwrap_or(0);
        for _ in 0..ARRIVES {
            if woke(target) {
                break;
            }
        }
        for (i, &other) in ids.iter().enumerate().filter(|&(_, &o)| o != bsp) {
            if woke(i) != (other == id) {
                fail!("interrupt for cpu {}: cpu {} woke: {}", id, other, woke(i));
            }
        }
        if eim {
            // The same CPU's id plus 256: a destination only 32-bit ids can name, which no CPU
            // has. Cut to 8 bits anywhere on the way, it would reach this CPU.
            irt.set(index, irt.entry(AP_VECTOR, id + 0x100), 0);
            v.flush_iec(Some((index, 0)));
            let (before, wakeups) = (rt::interrupt_count(AP_VECTOR), smp::wakeups(id));
            rt::sti();
            dev.pulse();
            for _ in 0..STAYS_AWAY {
                core::hint::spin_loop();
            }
            rt::cli();
            if rt::interrupt_count(AP_VECTOR) != before || smp::wakeups(id) != wakeups {
                fail!("destination {:#x} reached a CPU", id + 0x100);
            }
        }
        println!(
            "cpu {}: vector {:#x} through entry {:#x} ({} destination {})",
            id,
            AP_VECTOR,
            index,
            if eim { "x2APIC" } else { "xAPIC" },
            id
        );
    }
    rt::pass()
}

/// Raises an MSI and waits for any of `vectors`.
fn expect_any(dev: &Device, vectors: &[u8], what: &str) {
    let counts: [u32; 4] =
        core::array::from_fn(|i| vectors.get(i).map_or(0, |&x| rt::interrupt_count(x)));
    rt::sti();
    dev.pulse();
    for _ in 0..ARRIVES {
        if vectors
            .iter()
            .enumerate()
            .any(|(i, &x)| rt::interrupt_count(x) != counts[i])
        {
            break;
        }
    }
    rt::cli();
    if vectors
        .iter()
        .enumerate()
        .all(|(i, &x)| rt::interrupt_count(x) == counts[i])
    {
        fail!("{}: none of {:x?} delivered", what, vectors);
    }
}
