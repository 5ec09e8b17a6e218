//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), entered at the bzImage's 64-bit
//! entry point with the zero page in RSI.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, bzimage::BzImage};
use vm_memory::{Bytes, GuestAddress};

use super::{BootEntry, EntryMode, Error, KernelImage, load_high, write_cmdline};
use crate::GuestMemoryMmap;
use crate::layout::{CMDLINE_ADDR, HIMEM_START, MemoryLayout, PML4_ADDR, ZERO_PAGE_ADDR};

/// type_of_loader for a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
/// xloadflags bit 0: the kernel has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Offset of the 64-bit entry point from the protected-mode kernel's load address.
const STARTUP_64_OFFSET: u64 = 0x200;

pub(super) fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: KernelImage<'_>,
    rsdp: u64,
) -> Result<BootEntry, Error> {
    let loaded = BzImage::load(mem, None, image.kernel, Some(GuestAddress(HIMEM_START)))?;
    let mut hdr = loaded.setup_header.ok_or(Error::UnknownFormat)?;
    if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::NoLongModeEntry(hdr.version));
    }

    write_cmdline(mem, image.cmdline, hdr.cmdline_size as usize + 1)?;
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = image.cmdline.len() as u32;

    if let Some((file, _)) = image.initramfs {
        let ceiling = (u64::from(hdr.initrd_addr_max) + 1).min(layout.low_end());
        // The kernel decompresses itself to pref_address and needs init_size bytes there
        // (boot protocol 2.10+): the initramfs must stay clear of that as well as of the image.
        let runtime_end = hdr.pref_address.saturating_add(u64::from(hdr.init_size));
        let floor = loaded.kernel_end.max(runtime_end);
        let (addr, size) = load_high(mem, file, floor, ceiling)?;
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: rsdp,
        ..Default::default()
    };
    let e820 = layout.e820();
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;

    write_identity_map(mem)?;
    Ok(BootEntry {
        mode: EntryMode::Long64,
        rip: loaded.kernel_load.0 + STARTUP_64_OFFSET,
        rax: 0,
        rbx: 0,
        rsi: ZERO_PAGE_ADDR,
    })
}

/// Page-table entry bits.
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Identity-maps 0-4 GiB with 2 MiB pages: one PML4, one PDPT and four page directories, page after
/// page from [`PML4_ADDR`]. The boot protocol only needs the kernel, zero page and command line
/// mapped; 4 GiB also covers the initramfs wherever it lies below 4 GiB.
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), Error> {
    let pdpt = PML4_ADDR + 0x1000;
    let pd = pdpt + 0x1000;
    let pml4 = std::iter::once(pdpt | PRESENT | WRITABLE).chain(std::iter::repeat_n(0, 511));
    let pdpt = (0..4u64)
        .map(|i| (pd + i * 0x1000) | PRESENT | WRITABLE)
        .chain(std::iter::repeat_n(0, 508));
    let pds = (0..4 * 512u64).map(|i| (i << 21) | PRESENT | WRITABLE | PAGE_SIZE_2M);
    let bytes: Vec<u8> = pml4
        .chain(pdpt)
        .chain(pds)
        .flat_map(u64::to_le_bytes)
        .collect();
    mem.write_slice(&bytes, GuestAddress(PML4_ADDR))?;
    Ok(())
}
