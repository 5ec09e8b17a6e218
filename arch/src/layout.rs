//! The guest-physical memory map.
//!
//! ```text
//! 0x0000_0500  GDT used at entry by every boot protocol
//! 0x0000_6000  boot information: multiboot info block or PVH start_info, memory map, modules
//! 0x0000_7000  Linux zero page (boot_params)
//! 0x0000_8ff0  initial stack for a 64-bit Linux entry (grows down)
//! 0x0000_9000  identity page tables for a 64-bit Linux entry (PML4, PDPT, 4 PDs: 0-4 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA .. 0x10_0000: reserved (VGA hole, BIOS area)
//! 0x000e_0000  ACPI RSDP, then the other ACPI tables, up to 0xf_ffff
//! 0x0010_0000  kernel; RAM up to min(size, 3 GiB)
//! 0xc000_0000  32-bit MMIO hole: PCI BARs up to 0xdfff_ffff, ECAM (bus 0) at 0xe000_0000,
//!              IOAPIC 0xfec0_0000, the VT-d unit's registers 0xfed9_0000 (with --iommu),
//!              LAPIC 0xfee0_0000, KVM's TSS and identity page
//! 0x1_0000_0000 the rest of RAM when the guest has more than 3 GiB
//! ```

/// The GDT every boot protocol starts with.
pub const GDT_ADDR: u64 = 0x500;
/// Boot information page (multiboot info or PVH start_info with their tables).
pub const BOOT_INFO_ADDR: u64 = 0x6000;
/// Size of the boot information page.
pub const BOOT_INFO_SIZE: u64 = 0x1000;
/// Linux zero page.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for a 64-bit Linux entry.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// PML4 of the identity map for a 64-bit Linux entry; PDPT and PDs follow page by page.
pub const PML4_ADDR: u64 = 0x9000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Start of the extended BIOS data area: the end of usable low RAM.
pub const EBDA_START: u64 = 0x9_fc00;
/// Where the ACPI tables start (the RSDP first, where a BIOS-area scan finds it).
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the ACPI tables area.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of RAM above the legacy area; kernels load here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The 32-bit PCI MMIO window, for BARs: [PCI_MMIO32_START, ECAM_BASE).
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// ECAM: the memory-mapped configuration space of PCI bus 0 (1 MiB), reserved in e820.
pub const ECAM_BASE: u64 = 0xe000_0000;
/// Size of the ECAM window (bus 0 only).
pub const ECAM_SIZE: u64 = 1 << 20;
/// Size of the 64-bit PCI MMIO window, which starts at the first 1 GiB boundary above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// Start of RAM above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// IOAPIC registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The VT-d remapping unit's register page (with `--iommu`), where QEMU puts it and
/// kvm-unit-tests expects it; reserved in e820.
pub const IOMMU_BASE: u64 = 0xfed9_0000;
/// Size of the register page.
pub const IOMMU_SIZE: u64 = 0x1000;
/// PCI INTx lines use IOAPIC pins 16 to 23, as on a PC.
pub const PCI_INTX_FIRST_GSI: u32 = 16;
/// How many IOAPIC pins PCI INTx lines share.
pub const PCI_INTX_GSIS: u32 = 8;

/// The IOAPIC pin (GSI) of INTx pin `pin` (0: INTA .. 3: INTD) of the device in slot `slot` of
/// bus 0, as the DSDT's _PRT tells the guest and the VMM wires it: the slots after the host bridge
/// take the eight pins in turn, and pins B-D are swizzled onward as on a PCI bridge.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    let n = u32::from(slot)
        .wrapping_sub(1)
        .wrapping_add(u32::from(pin & 3));
    PCI_INTX_FIRST_GSI + n % PCI_INTX_GSIS
}
/// Local APIC registers.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// Three pages KVM needs for its real-mode TSS on Intel hosts.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// One page KVM needs for its real-mode identity map on Intel hosts.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved ranges.
pub const E820_RESERVED: u32 = 2;

/// One range of the memory map handed to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// Where the guest's RAM lies, derived from its size, and whether the VT-d unit's register page
/// is present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Bytes of RAM below the MMIO hole (from address 0).
    pub low_size: u64,
    /// Bytes of RAM from [`HIGH_RAM_START`] up.
    pub high_size: u64,
    /// The remapping unit's register page at [`IOMMU_BASE`] is present (and reserved in e820).
    pub iommu: bool,
}

/// The smallest guest the layout supports: the fixed low structures plus room for a kernel.
pub const MIN_MEMORY: u64 = 2 << 20;

impl MemoryLayout {
    /// Splits `size` bytes of RAM around the 32-bit MMIO hole.
    pub fn new(size: u64) -> Self {
        let low_size = size.min(MMIO_HOLE_START);
        Self {
            low_size,
            high_size: size - low_size,
            iommu: false,
        }
    }

    /// The (guest address, length) ranges to back with host memory.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges = vec![(0, self.low_size)];
        if self.high_size > 0 {
            ranges.push((HIGH_RAM_START, self.high_size));
        }
        ranges
    }

    /// End (exclusive) of RAM below 4 GiB.
    pub fn low_end(&self) -> u64 {
        self.low_size
    }

    /// Where the 64-bit PCI MMIO window starts: the first 1 GiB boundary above all RAM.
    pub fn pci_mmio64_start(&self) -> u64 {
        (HIGH_RAM_START + self.high_size).next_multiple_of(1 << 30)
    }

    /// The memory map as firmware would report it, in address order: low RAM, the reserved
    /// legacy area, RAM from 1 MiB to the hole, the ECAM window (reserved: Linux wants MCFG
    /// regions to be), the VT-d unit's registers if present, and RAM above 4 GiB.
    pub fn e820(&self) -> Vec<E820Entry> {
        let entry = |addr, size, kind| E820Entry { addr, size, kind };
        let mut map = vec![
            entry(0, EBDA_START, E820_RAM),
            entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
            entry(HIMEM_START, self.low_size - HIMEM_START, E820_RAM),
            entry(ECAM_BASE, ECAM_SIZE, E820_RESERVED),
        ];
        if self.iommu {
            map.push(entry(IOMMU_BASE, IOMMU_SIZE, E820_RESERVED));
        }
        if self.high_size > 0 {
            map.push(entry(HIGH_RAM_START, self.high_size, E820_RAM));
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_no_high_ram() {
        let l = MemoryLayout::new(256 << 20);
        assert_eq!(l.ram_ranges(), vec![(0, 256 << 20)]);
        let e = l.e820();
        assert_eq!(e.len(), 4);
        assert_eq!(e[3].addr, ECAM_BASE);
        assert_eq!(
            e[2],
            E820Entry {
                addr: 1 << 20,
                size: 255 << 20,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn the_iommu_page_is_reserved_only_when_present() {
        let reserved = |l: MemoryLayout| {
            l.e820()
                .iter()
                .any(|e| e.addr == IOMMU_BASE && e.size == IOMMU_SIZE && e.kind == E820_RESERVED)
        };
        assert!(!reserved(MemoryLayout::new(6 << 30)));
        let with = MemoryLayout {
            iommu: true,
            ..MemoryLayout::new(6 << 30)
        };
        assert!(reserved(with));
        let addrs: Vec<u64> = with.e820().iter().map(|e| e.addr).collect();
        assert!(addrs.is_sorted(), "{addrs:x?}");
        const { assert!(IOMMU_BASE >= ECAM_BASE + ECAM_SIZE && IOMMU_BASE + IOMMU_SIZE <= LAPIC_ADDR) };
    }

    #[test]
    fn large_guest_continues_above_4g() {
        let l = MemoryLayout::new(6 << 30);
        assert_eq!(l.ram_ranges(), vec![(0, 3 << 30), (4 << 30, 3 << 30)]);
        let e = l.e820();
        assert_eq!(
            e[4],
            E820Entry {
                addr: 4 << 30,
                size: 3 << 30,
                kind: E820_RAM
            }
        );
        let ram: u64 = e
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (6 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn the_64_bit_pci_window_starts_above_ram() {
        assert_eq!(MemoryLayout::new(6 << 30).pci_mmio64_start(), 7 << 30);
        assert_eq!(MemoryLayout::new(512 << 20).pci_mmio64_start(), 4 << 30);
        assert_eq!(
            MemoryLayout::new((3 << 30) + 4096).pci_mmio64_start(),
            5 << 30
        );
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let spans = [
            (GDT_ADDR, 0x20),
            (BOOT_INFO_ADDR, BOOT_INFO_SIZE),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 6 * 0x1000),
            (CMDLINE_ADDR, CMDLINE_MAX as u64),
        ];
        for (i, a) in spans.iter().enumerate() {
            assert!(a.0 + a.1 <= EBDA_START);
            for b in &spans[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
        const { assert!(BOOT_STACK_TOP < PML4_ADDR && BOOT_STACK_TOP > ZERO_PAGE_ADDR + 0x1000) };
    }
}
