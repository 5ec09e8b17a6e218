//! ACPI tables for a hardware-reduced PC: RSDP, XSDT, FADT, MADT and a DSDT, placed in the BIOS
//! area where both a table pointer (Linux zero page, PVH start_info) and a legacy scan find them.
//!
//! acpi_tables builds the headers and checksums; what it lacks (MADT interrupt source overrides and
//! local APIC NMI entries) is defined here.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace as ResourceAddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt,
    Name, Package, PackageBuilder, Path, ResourceTemplate,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{Immutable, IntoBytes};

use crate::GuestMemoryMmap;
use crate::layout::{
    ACPI_END, ACPI_START, ECAM_BASE, IOAPIC_ADDR, LAPIC_ADDR, MemoryLayout, PCI_MMIO32_START,
    PCI_MMIO64_SIZE,
};

/// OEM id in every table.
pub const OEM_ID: [u8; 6] = *b"RVVMM ";
const OEM_REVISION: u32 = 1;

/// The I/O port block of the sleep control/status and reset registers (devices::legacy::AcpiPm).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Offsets and values within that block, as the device implements them.
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// Sleep status register offset.
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// Reset register offset.
pub const RESET_OFFSET: u16 = 2;
/// Value to write to the reset register.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP of S5 in the DSDT's `_S5_` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The IOAPIC's id in the MADT (and its ID register's reset value in the VMM's I/O APIC).
pub const IOAPIC_ID: u8 = 0;
/// The IOAPIC's source-id as the DMAR table's I/O APIC scope names it: bus 0xf0, device 0x1f,
/// function 0, as on Intel chipsets (off bus 0, so no PCI function shares it). Interrupt-remapping
/// faults of its interrupts carry it.
pub const IOAPIC_SOURCE_ID: u16 = 0xf0f8;
/// The CMOS RTC's index port (data follows), as the DSDT describes it.
pub const CMOS_PORT: u16 = 0x70;
/// COM1's port and interrupt.
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;

/// Errors while building the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tables outgrew the BIOS area.
    #[error("ACPI tables need {0} bytes, more than the {max} reserved", max = ACPI_END - ACPI_START)]
    TooLarge(usize),
    /// Too many vCPUs for xAPIC ids.
    #[error("{0} vCPUs do not fit the MADT's 8-bit APIC ids")]
    TooManyCpus(usize),
    /// Writing guest memory failed.
    #[error("cannot write ACPI tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// MADT Interrupt Source Override (ACPI 6.5, 5.2.12.5).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT Local APIC NMI (ACPI 6.5, 5.2.12.7).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// FADT IAPC_BOOT_ARCH: an 8042 is present (bit 1); VGA is not (bit 2).
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn dsdt(layout: &MemoryLayout) -> Vec<u8> {
    let hid = EISAName::new("PNP0501");
    let port = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&port, &irq]);
    let (hid_name, uid, crs_name) = (
        Name::new("_HID".into(), &hid),
        Name::new("_UID".into(), &0u8),
        Name::new("_CRS".into(), &crs),
    );
    let com1 = Device::new(Path::from("_SB_.COM1"), vec![&hid_name, &uid, &crs_name]);
    // The CMOS RTC, without an interrupt: the device raises none.
    let rtc_hid = EISAName::new("PNP0B00");
    let rtc_port = IO::new(CMOS_PORT, CMOS_PORT, 1, 2);
    let rtc_crs = ResourceTemplate::new(vec![&rtc_port]);
    let (rtc_hid_name, rtc_crs_name) = (
        Name::new("_HID".into(), &rtc_hid),
        Name::new("_CRS".into(), &rtc_crs),
    );
    let rtc = Device::new(Path::from("_SB_.RTC_"), vec![&rtc_hid_name, &rtc_crs_name]);
    let s5 = Package::new(vec![&S5_SLEEP_TYPE, &S5_SLEEP_TYPE, &0u8, &0u8]);
    let s5 = Name::new("_S5_".into(), &s5);

    // The PCI root bridge (PCI Firmware 3.2, 4.1.5): bus 0, the configuration ports, the I/O
    // ports around them, the 32-bit BAR window below ECAM and a 64-bit window above RAM.
    let (pci_hid, pci_cid) = (EISAName::new("PNP0A08"), EISAName::new("PNP0A03"));
    let buses = ResourceAddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = ResourceAddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = ResourceAddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mmio32 = ResourceAddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO32_START as u32,
        (ECAM_BASE - 1) as u32,
        None,
    );
    let mmio64_start = layout.pci_mmio64_start();
    let mmio64 = ResourceAddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio64_start,
        mmio64_start + PCI_MMIO64_SIZE - 1,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![
        &buses,
        &config_ports,
        &io_low,
        &io_high,
        &mmio32,
        &mmio64,
    ]);
    // INTx routing (ACPI 6.5, 6.2.13): every slot's four pins to their IOAPIC pins (GSIs).
    let mut prt = PackageBuilder::new();
    for slot in 1u8..32 {
        for pin in 0u8..4 {
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = crate::layout::pci_intx_gsi(slot, pin);
            let entry = Package::new(vec![&address, &pin, &0u8, &gsi]);
            prt.add_element(&entry);
        }
    }
    let pci_names = [
        Name::new("_PRT".into(), &prt),
        Name::new("_HID".into(), &pci_hid),
        Name::new("_CID".into(), &pci_cid),
        Name::new("_ADR".into(), &0u8),
        Name::new("_SEG".into(), &0u8),
        Name::new("_UID".into(), &0u8),
        Name::new("_BBN".into(), &0u8),
        Name::new("_CRS".into(), &pci_crs),
    ];
    let pci0 = Device::new(
        Path::from("_SB_.PCI0"),
        pci_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"VMMDSDT ", OEM_REVISION);
    let mut aml = Vec::new();
    s5.to_aml_bytes(&mut aml);
    com1.to_aml_bytes(&mut aml);
    rtc.to_aml_bytes(&mut aml);
    pci0.to_aml_bytes(&mut aml);
    table.append_slice(&aml);
    table.as_slice().to_vec()
}

fn fadt(dsdt: u64) -> Vec<u8> {
    let io = |offset: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(ACPI_PM_PORT + offset),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, *b"VMMFACP ", OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = io(RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io(SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = io(SLEEP_STATUS_OFFSET);
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"RVVMM\0\0\0").into();
    to_bytes(&fadt.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        *b"VMMAPIC ",
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDR as u32),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_ADDR as u32, 0));
    // As on a PC (and QEMU's q35): ISA IRQ 0 is IOAPIC pin 2 (edge, active high: flags 0). There
    // is no PIT behind it; the override keeps the PC's ISA IRQ numbering, which guests assume.
    madt.add_structure(InterruptSourceOverride {
        kind: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2,
        flags: 0,
    });
    // LINT1 of every processor (uid 0xff) is the NMI pin.
    madt.add_structure(LocalApicNmi {
        kind: 4,
        length: 6,
        processor_uid: 0xff,
        flags: 0,
        lint: 1,
    });
    // Flags 0: no PCAT_COMPAT, the platform has no 8259s (the VMM's I/O APIC is the only
    // interrupt controller besides the local APICs).
    to_bytes(&madt)
}

/// DMAR: one remapping hardware unit (DRHD) at `register_base` covering every PCI device of
/// segment 0 (INCLUDE_PCI_ALL) and the I/O APIC (a device scope naming its MADT id, which Linux
/// needs before it remaps interrupts), for a host address width of `aw_bits`; the INTR_REMAP flag
/// when the unit remaps interrupts. X2APIC_OPT_OUT is never set.
pub fn dmar(aw_bits: u8, register_base: u64, interrupt_remapping: bool) -> Vec<u8> {
    /// Header, host address width, flags and 10 reserved bytes.
    const DMAR_HEADER: u32 = 48;
    const DMAR_INTR_REMAP: u8 = 1;
    /// A DRHD's own fields, before its device scopes.
    const DRHD_LEN: u16 = 16;
    const DRHD_INCLUDE_PCI_ALL: u8 = 1;
    /// A device scope with a one-step path.
    const SCOPE_LEN: u8 = 8;
    const SCOPE_IOAPIC: u8 = 3;
    let mut table = Sdt::new(*b"DMAR", DMAR_HEADER, 1, OEM_ID, *b"VMMDMAR ", OEM_REVISION);
    table.write_u8(36, aw_bits.saturating_sub(1));
    if interrupt_remapping {
        table.write_u8(37, DMAR_INTR_REMAP);
    }
    let len = DRHD_LEN + u16::from(SCOPE_LEN);
    let mut drhd = Vec::with_capacity(usize::from(len));
    drhd.extend_from_slice(&0u16.to_le_bytes()); // type 0: DRHD
    drhd.extend_from_slice(&len.to_le_bytes());
    drhd.push(DRHD_INCLUDE_PCI_ALL);
    drhd.push(0); // size: 2^0 register pages
    drhd.extend_from_slice(&0u16.to_le_bytes()); // PCI segment 0
    drhd.extend_from_slice(&register_base.to_le_bytes());
    // The I/O APIC: its MADT id as enumeration id, its source-id as start bus and path.
    let [bus, devfn] = IOAPIC_SOURCE_ID.to_be_bytes();
    drhd.extend_from_slice(&[SCOPE_IOAPIC, SCOPE_LEN, 0, 0, IOAPIC_ID, bus]);
    drhd.extend_from_slice(&[devfn >> 3, devfn & 7]);
    table.append_slice(&drhd);
    table.as_slice().to_vec()
}

/// The tables laid out for guest-physical [`ACPI_START`]: the RSDP first, then each table
/// 16-byte aligned, the XSDT last.
#[derive(Debug)]
pub struct Tables {
    /// Bytes to copy to [`ACPI_START`].
    pub image: Vec<u8>,
    /// Guest-physical address of each table, by signature, in XSDT order.
    pub tables: Vec<([u8; 4], u64)>,
}

impl Tables {
    /// Builds the tables of a machine with `cpus` vCPUs, plus `extra` finished tables (each with its
    /// own header and checksum) referenced from the XSDT.
    pub fn build(cpus: usize, layout: &MemoryLayout, extra: &[Vec<u8>]) -> Result<Self, Error> {
        let cpus = u8::try_from(cpus)
            .ok()
            .filter(|&c| c < 0xff)
            .ok_or(Error::TooManyCpus(cpus))?;
        let mut image = vec![0u8; Rsdp::len()];
        let place = |image: &mut Vec<u8>, table: &[u8]| {
            image.resize(image.len().next_multiple_of(16), 0);
            let addr = ACPI_START + image.len() as u64;
            image.extend_from_slice(table);
            addr
        };
        let dsdt_addr = place(&mut image, &dsdt(layout));
        let mut tables = vec![(*b"FACP", place(&mut image, &fadt(dsdt_addr)))];
        tables.push((*b"APIC", place(&mut image, &madt(cpus))));
        let mut mcfg = MCFG::new(OEM_ID, *b"VMMMCFG ", OEM_REVISION);
        mcfg.add_ecam(ECAM_BASE, 0, 0, 0);
        tables.push((*b"MCFG", place(&mut image, &to_bytes(&mcfg))));
        for t in extra {
            let sig: [u8; 4] = t
                .get(..4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or(*b"????");
            tables.push((sig, place(&mut image, t)));
        }
        let mut xsdt = XSDT::new(OEM_ID, *b"VMMXSDT ", OEM_REVISION);
        for (_, addr) in &tables {
            xsdt.add_entry(*addr);
        }
        let xsdt_addr = place(&mut image, &to_bytes(&xsdt));
        let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
        if let Some(head) = image.get_mut(..rsdp.len()) {
            head.copy_from_slice(&rsdp);
        }
        if image.len() as u64 > ACPI_END - ACPI_START {
            return Err(Error::TooLarge(image.len()));
        }
        tables.insert(0, (*b"DSDT", dsdt_addr));
        tables.push((*b"XSDT", xsdt_addr));
        Ok(Self { image, tables })
    }

    /// Copies the tables into guest memory; returns the RSDP address.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<u64, Error> {
        mem.write_slice(&self.image, GuestAddress(ACPI_START))?;
        Ok(ACPI_START)
    }

    /// The bytes of the table with signature `sig`.
    pub fn table(&self, sig: &[u8; 4]) -> Option<&[u8]> {
        let (_, addr) = self.tables.iter().find(|(s, _)| s == sig)?;
        let start = usize::try_from(addr - ACPI_START).ok()?;
        let len = u32::from_le_bytes(self.image.get(start + 4..start + 8)?.try_into().ok()?);
        self.image.get(start..start + len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_lengths_and_pointers_are_consistent() {
        let t = Tables::build(4, &MemoryLayout::new(1 << 30), &[]).unwrap();
        assert_eq!(&t.image[..8], b"RSD PTR ");
        assert_eq!(sum(&t.image[..20]), 0);
        assert_eq!(sum(&t.image[..36]), 0);
        let xsdt_addr = u64::from_le_bytes(t.image[24..32].try_into().unwrap());
        let xsdt = t.table(b"XSDT").unwrap();
        assert_eq!(xsdt_addr, t.tables.last().unwrap().1);
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 3);
        for sig in [b"DSDT", b"FACP", b"APIC", b"MCFG", b"XSDT"] {
            let table = t.table(sig).unwrap();
            assert_eq!(&table[..4], sig);
            assert_eq!(sum(table), 0, "{} checksum", String::from_utf8_lossy(sig));
        }
        let fadt = t.table(b"FACP").unwrap();
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, t.tables[0].1);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
    }

    #[test]
    fn madt_lists_every_cpu_the_ioapic_and_overrides() {
        let t = Tables::build(3, &MemoryLayout::new(1 << 30), &[]).unwrap();
        let madt = t.table(b"APIC").unwrap();
        assert_eq!(
            u32::from_le_bytes(madt[36..40].try_into().unwrap()),
            LAPIC_ADDR as u32
        );
        assert_eq!(
            u32::from_le_bytes(madt[40..44].try_into().unwrap()),
            0,
            "no PCAT_COMPAT: there are no 8259s"
        );
        let mut kinds = Vec::new();
        let mut apic_ids = Vec::new();
        let mut at = 44;
        while at < madt.len() {
            let (kind, len) = (madt[at], madt[at + 1] as usize);
            if kind == 0 {
                apic_ids.push(madt[at + 3]);
            }
            kinds.push(kind);
            at += len;
        }
        assert_eq!(at, madt.len());
        assert_eq!(apic_ids, vec![0, 1, 2]);
        assert_eq!(kinds, vec![0, 0, 0, 1, 2, 4]);
    }

    #[test]
    fn dmar_describes_one_unit_for_all_devices() {
        let t = Tables::build(
            1,
            &MemoryLayout::new(1 << 30),
            &[dmar(48, crate::layout::IOMMU_BASE, true)],
        )
        .unwrap();
        let d = t.table(b"DMAR").unwrap();
        assert_eq!(sum(d), 0);
        assert_eq!(d.len(), 72);
        assert_eq!(d[8], 1, "revision");
        assert_eq!(d[36], 47, "host address width - 1");
        assert_eq!(d[37], 1, "INTR_REMAP, no X2APIC_OPT_OUT");
        assert_eq!(&d[48..52], &[0, 0, 24, 0], "DRHD, 24 bytes with its scope");
        assert_eq!(d[52], 1, "INCLUDE_PCI_ALL");
        assert_eq!(u16::from_le_bytes([d[54], d[55]]), 0, "segment");
        assert_eq!(
            u64::from_le_bytes(d[56..64].try_into().unwrap()),
            0xfed9_0000
        );
        assert_eq!(
            &d[64..72],
            &[3, 8, 0, 0, IOAPIC_ID, 0xf0, 0x1f, 0],
            "I/O APIC scope: enumeration id, bus 0xf0, path 1f.0"
        );
        let xsdt = t.table(b"XSDT").unwrap();
        assert_eq!((xsdt.len() - 36) / 8, 4, "FACP, APIC, MCFG, DMAR");
        assert_eq!(dmar(39, 0, true)[36], 38);
        assert_eq!(dmar(48, 0, false)[37], 0, "no interrupt remapping claimed");
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            Tables::build(255, &MemoryLayout::new(1 << 30), &[]),
            Err(Error::TooManyCpus(255))
        ));
        assert!(Tables::build(254, &MemoryLayout::new(1 << 30), &[]).is_ok());
    }

    /// Disassembles every table with ACPICA's `iasl -d`, an independent parser.
    #[test]
    fn tables_pass_iasl() {
        if Command::new("iasl").arg("-v").output().is_err() {
            crate::skip(
                "acpi::tables_pass_iasl",
                "iasl is not installed (apt-get install acpica-tools)",
            );
            return;
        }
        let t = Tables::build(
            2,
            &MemoryLayout::new(6 << 30),
            &[dmar(48, crate::layout::IOMMU_BASE, true)],
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("vmm-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (sig, _) in &t.tables {
            let name = String::from_utf8_lossy(sig).to_lowercase();
            let path = dir.join(format!("{name}.dat"));
            std::fs::write(&path, t.table(sig).unwrap()).unwrap();
            let out = Command::new("iasl")
                .arg("-d")
                .arg(&path)
                .current_dir(&dir)
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {text}");
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            for bad in ["Error", "Invalid", "Unknown"] {
                assert!(!dsl.contains(bad), "iasl reports {bad} in {name}:\n{dsl}");
            }
            assert!(!text.contains("Error"), "iasl -d {name}: {text}");
            if name == "dmar" {
                let flat: String = dsl.split_whitespace().collect();
                for field in [
                    "HostAddressWidth:2F",
                    "Flags:01",
                    "SubtableType:0000[HardwareUnitDefinition]",
                    "RegisterBaseAddress:00000000FED90000",
                    "DeviceScopeType:03[IOAPICDevice]",
                    "EnumerationID:00",
                    "PCIBusNumber:F0",
                    "PCIPath:1F,00",
                ] {
                    assert!(flat.contains(field), "no {field} in:\n{dsl}");
                }
            }
            if name == "dsdt" {
                // Slot 1 INTA -> GSI 16; slot 31 INTD -> GSI 16 + (30 + 3) % 8 = 17.
                let flat: String = dsl.split_whitespace().collect();
                assert!(flat.contains("Name(_PRT,Package(0x7C)"), "{dsl}");
                for entry in [
                    "Package(0x04){0x0001FFFF,Zero,Zero,0x10}",
                    "Package(0x04){0x001FFFFF,0x03,Zero,0x11}",
                ] {
                    assert!(flat.contains(entry), "no _PRT entry {entry} in:\n{dsl}");
                }
            }
        }
        if std::env::var_os("VMM_KEEP_ACPI").is_none() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
