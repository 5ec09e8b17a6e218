//! The PVH boot ABI (Xen's docs/misc/pvh.pandoc): 32-bit protected mode, paging off, EBX pointing
//! at an `hvm_start_info` with the command line, modules, RSDP and memory map.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{KernelLoader, elf::Elf, elf::PvhBootCapability};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress};

use super::{BootEntry, EntryMode, Error, KernelImage, load_high, write_cmdline};
use crate::GuestMemoryMmap;
use crate::layout::{BOOT_INFO_ADDR, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, MemoryLayout};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Where in the boot information page each table goes.
const MODLIST_OFFSET: u64 = 0x100;
const MEMMAP_OFFSET: u64 = 0x200;

pub(super) fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: KernelImage<'_>,
    rsdp: u64,
) -> Result<BootEntry, Error> {
    check_segments(image.kernel, layout)?;
    let loaded = Elf::load(mem, None, image.kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(Error::NotBootableElf)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(Error::ElfWithoutEntry);
    };
    write_cmdline(mem, image.cmdline, CMDLINE_MAX)?;

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        ..Default::default()
    };

    if let Some((file, _)) = image.initramfs {
        let (paddr, size) = load_high(mem, file, loaded.kernel_end, layout.low_end())?;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(BOOT_INFO_ADDR + MODLIST_OFFSET))?;
        info.nr_modules = 1;
        info.modlist_paddr = BOOT_INFO_ADDR + MODLIST_OFFSET;
    }

    let e820 = layout.e820();
    for (i, e) in e820.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let at = BOOT_INFO_ADDR + MEMMAP_OFFSET + (i * std::mem::size_of_val(&entry)) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    info.memmap_paddr = BOOT_INFO_ADDR + MEMMAP_OFFSET;
    info.memmap_entries = e820.len() as u32;
    mem.write_obj(info, GuestAddress(BOOT_INFO_ADDR))?;

    Ok(BootEntry {
        mode: EntryMode::Protected32,
        rip: entry.0,
        rax: 0,
        rbx: BOOT_INFO_ADDR,
        rsi: 0,
    })
}

/// Checks, before anything is written, that every PT_LOAD segment lies in RAM between 1 MiB and the
/// top of RAM below 4 GiB (the entry is 32-bit), so that a kernel cannot overwrite the boot
/// structures or the ACPI tables below 1 MiB. linux-loader itself only checks the entry point.
fn check_segments(kernel: &mut File, layout: &MemoryLayout) -> Result<(), Error> {
    const ELF64_HEADER: usize = 64;
    let io = |source| Error::Io {
        what: "kernel",
        source,
    };
    let mut head = vec![0u8; ELF64_HEADER];
    kernel.read_exact(&mut head).map_err(io)?;
    let field = |at: usize, len: usize| {
        head.get(at..at + len)
            .map(|b| b.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x)))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return Err(Error::ElfWithoutEntry);
    };
    // Program headers past the first 16 MiB of the file are not worth reading.
    let end = phentsize
        .checked_mul(phnum)
        .and_then(|n| n.checked_add(phoff))
        .filter(|&e| e <= 16 << 20)
        .ok_or_else(|| Error::Malformed("ELF program headers are out of range".into()))?;
    let mut headers = vec![0u8; end as usize];
    kernel.seek(SeekFrom::Start(0)).map_err(io)?;
    kernel.read_exact(&mut headers).map_err(io)?;
    kernel.seek(SeekFrom::Start(0)).map_err(io)?;
    let (segments, _) = super::multiboot::elf_segments(&headers)?;
    for seg in segments {
        let seg_end = seg.paddr.saturating_add(seg.mem_len);
        if seg.paddr < HIMEM_START || seg_end > layout.low_end() {
            return Err(Error::SegmentOutsideRam {
                start: seg.paddr,
                end: seg_end,
                ram_end: layout.low_end(),
            });
        }
    }
    Ok(())
}
