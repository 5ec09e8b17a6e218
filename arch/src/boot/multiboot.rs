//! Multiboot v1 (the Multiboot Specification 0.6.96): the header in the first 8 KiB, loading by ELF
//! program headers or by the header's address fields (flag 16), and the information block.

use std::io::Read;

use vm_memory::{Bytes, GuestAddress};

use super::{
    BootEntry, EntryMode, Error, KernelImage, MULTIBOOT_SEARCH, check_ram, file_len, write_cmdline,
};
use crate::GuestMemoryMmap;
use crate::layout::{BOOT_INFO_ADDR, CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START, MemoryLayout};

const HEADER_MAGIC: u32 = 0x1bad_b002;
/// EAX at entry.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;

/// Header flags (spec 3.1.2). Bits 0-15 are requirements: a loader must refuse ones it does not
/// know. Bit 2 (video mode) is known but there is no framebuffer, so no video information is given.
const FLAG_PAGE_ALIGN_MODULES: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_ADDRESS_FIELDS: u32 = 1 << 16;
const KNOWN_REQUIREMENTS: u32 = FLAG_PAGE_ALIGN_MODULES | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE;

/// Information-block flags (spec 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;

/// Where in the boot information page each part goes.
const MMAP_OFFSET: u64 = 0x100;
const MODS_OFFSET: u64 = 0x200;
const STRINGS_OFFSET: u64 = 0x300;
const LOADER_NAME: &[u8] = b"vmm\0";

/// A multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// Offset of the header in the file.
    offset: usize,
    flags: u32,
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    let b = bytes.get(offset..offset.checked_add(2)?)?;
    Some(u16::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    let b = bytes.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Finds a valid header (magic, and flags and checksum summing to zero) on a 4-byte boundary in
/// the first 8 KiB.
pub(super) fn find_header(image: &[u8]) -> Option<Header> {
    let window = image.get(..MULTIBOOT_SEARCH).unwrap_or(image);
    (0..window.len()).step_by(4).find_map(|offset| {
        let magic = u32_at(window, offset)?;
        let flags = u32_at(window, offset + 4)?;
        let checksum = u32_at(window, offset + 8)?;
        (magic == HEADER_MAGIC && magic.wrapping_add(flags).wrapping_add(checksum) == 0)
            .then_some(Header { offset, flags })
    })
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}

/// A piece of the image to place in guest memory: `file_len` bytes from `offset`, then zeros up to
/// `mem_len`.
pub(super) struct Segment {
    offset: u64,
    file_len: u64,
    pub(super) paddr: u64,
    vaddr: u64,
    pub(super) mem_len: u64,
}

/// The segments and entry point that the header's address fields (flag 16) describe.
fn address_field_segments(image: &[u8], h: Header) -> Result<(Vec<Segment>, u64), Error> {
    let field = |i: usize| u32_at(image, h.offset + 12 + 4 * i).map(u64::from);
    let (Some(header_addr), Some(load_addr), Some(load_end), Some(bss_end), Some(entry)) =
        (field(0), field(1), field(2), field(3), field(4))
    else {
        return Err(bad("header is truncated"));
    };
    let offset = (h.offset as u64)
        .checked_sub(
            header_addr
                .checked_sub(load_addr)
                .ok_or_else(|| bad("header_addr below load_addr"))?,
        )
        .ok_or_else(|| bad("load_addr lies before the start of the file"))?;
    let file_len = if load_end == 0 {
        image.len() as u64 - offset
    } else {
        load_end
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr below load_addr"))?
    };
    let mem_len = if bss_end == 0 {
        file_len
    } else {
        bss_end
            .checked_sub(load_addr)
            .ok_or_else(|| bad("bss_end_addr below load_addr"))?
    };
    let seg = Segment {
        offset,
        file_len,
        paddr: load_addr,
        vaddr: load_addr,
        mem_len,
    };
    Ok((vec![seg], entry))
}

const PT_LOAD: u32 = 1;

/// The PT_LOAD segments and entry point of an ELF32 or ELF64 image.
pub(super) fn elf_segments(image: &[u8]) -> Result<(Vec<Segment>, u64), Error> {
    if !image.starts_with(b"\x7fELF") {
        return Err(bad("no ELF header and no address fields (header flag 16)"));
    }
    let is64 = match image.get(4) {
        Some(1) => false,
        Some(2) => true,
        _ => return Err(bad("unknown ELF class")),
    };
    if image.get(5) != Some(&1) {
        return Err(bad("ELF is not little-endian"));
    }
    let trunc = || bad("ELF header is truncated");
    let (entry, phoff, phentsize, phnum) = if is64 {
        (
            u64_at(image, 0x18),
            u64_at(image, 0x20),
            u16_at(image, 0x36),
            u16_at(image, 0x38),
        )
    } else {
        (
            u32_at(image, 0x18).map(u64::from),
            u32_at(image, 0x1c).map(u64::from),
            u16_at(image, 0x2a),
            u16_at(image, 0x2c),
        )
    };
    let (entry, phoff, phentsize, phnum) = (
        entry.ok_or_else(trunc)?,
        phoff.ok_or_else(trunc)?,
        phentsize.ok_or_else(trunc)?,
        phnum.ok_or_else(trunc)?,
    );
    if usize::from(phentsize) < if is64 { 56 } else { 32 } {
        return Err(bad("ELF program header entries are too small"));
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let ph = i
            .checked_mul(u64::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(trunc)?;
        // u64_at/u32_at return None for offsets that overflow or lie past the end.
        let at = |o: usize| ph.saturating_add(o);
        let fields = if is64 {
            [0, 8, 16, 24, 32, 40].map(|o| u64_at(image, at(o)))
        } else {
            [0, 4, 8, 12, 16, 20].map(|o| u32_at(image, at(o)).map(u64::from))
        };
        let [
            Some(p_type),
            Some(offset),
            Some(vaddr),
            Some(paddr),
            Some(file_len),
            Some(mem_len),
        ] = fields
        else {
            return Err(bad("ELF program headers are truncated"));
        };
        // In ELF64 the first word holds p_type in its low half and p_flags in its high half.
        if p_type as u32 == PT_LOAD && mem_len > 0 {
            segments.push(Segment {
                offset,
                file_len,
                paddr,
                vaddr,
                mem_len,
            });
        }
    }
    Ok((segments, entry))
}

/// Copies the segments into RAM (each must lie in RAM from 1 MiB to 4 GiB); returns the end of the
/// highest one and the physical entry point.
fn place_segments(
    mem: &GuestMemoryMmap,
    image: &[u8],
    segments: &[Segment],
    entry: u64,
) -> Result<(u64, u64), Error> {
    if segments.is_empty() {
        return Err(bad("nothing to load"));
    }
    let mut end = 0;
    let mut phys_entry = None;
    for s in segments {
        let seg_end = s
            .paddr
            .checked_add(s.mem_len)
            .ok_or_else(|| bad("segment wraps around"))?;
        if s.file_len > s.mem_len {
            return Err(bad("segment's file size exceeds its memory size"));
        }
        if s.paddr < HIMEM_START || seg_end > 1 << 32 || !check_ram(mem, s.paddr, s.mem_len) {
            return Err(bad(format!(
                "segment {:#x}-{:#x} is not in guest RAM between 1 MiB and 4 GiB",
                s.paddr, seg_end
            )));
        }
        let data = usize::try_from(s.offset)
            .ok()
            .zip(usize::try_from(s.file_len).ok())
            .and_then(|(o, l)| image.get(o..o.checked_add(l)?))
            .ok_or_else(|| bad("segment extends past the end of the file"))?;
        mem.write_slice(data, GuestAddress(s.paddr))?;
        zero(mem, s.paddr + s.file_len, s.mem_len - s.file_len)?;
        end = end.max(seg_end);
        if entry >= s.vaddr && entry - s.vaddr < s.mem_len {
            phys_entry = Some(entry - s.vaddr + s.paddr);
        }
    }
    let phys_entry = phys_entry
        .ok_or_else(|| bad(format!("entry point {entry:#x} is not in a loaded segment")))?;
    Ok((end, phys_entry))
}

/// Zeroes `len` bytes of guest memory from `addr` (a segment's bss), a page at a time rather than
/// through one host buffer as large as the bss.
fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), Error> {
    const CHUNK: u64 = 4096;
    let page = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        mem.write_slice(
            page.get(..n as usize).unwrap_or(&page),
            GuestAddress(addr + done),
        )?;
        done += n;
    }
    Ok(())
}

pub(super) fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: KernelImage<'_>,
) -> Result<BootEntry, Error> {
    // The whole image is read for the ELF and header parsing; no kernel larger than the RAM below
    // 4 GiB could load, so refuse before reading one.
    let size = file_len(image.kernel, "kernel")?;
    if size > layout.low_end() {
        return Err(bad(format!(
            "the image ({size} bytes) is larger than guest RAM below 4 GiB"
        )));
    }
    let mut bytes = Vec::new();
    image
        .kernel
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            what: "kernel",
            source,
        })?;
    let header = find_header(&bytes).ok_or(Error::UnknownFormat)?;
    let unknown = header.flags & 0xffff & !KNOWN_REQUIREMENTS;
    if unknown != 0 {
        return Err(bad(format!(
            "header requires unsupported features (flags {unknown:#x})"
        )));
    }
    let (segments, entry) = if header.flags & FLAG_ADDRESS_FIELDS != 0 {
        address_field_segments(&bytes, header)?
    } else {
        elf_segments(&bytes)?
    };
    let (kernel_end, entry) = place_segments(mem, &bytes, &segments, entry)?;

    write_cmdline(mem, image.cmdline, CMDLINE_MAX)?;
    let strings = BOOT_INFO_ADDR + STRINGS_OFFSET;
    mem.write_slice(LOADER_NAME, GuestAddress(strings))?;
    let flags = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME;

    let mut mods_count = 0;
    if let Some((file, name)) = image.initramfs {
        let start = (kernel_end + 0xfff) & !0xfff;
        let len = file_len(file, "initramfs")?;
        let too_big = Error::InitramfsTooBig {
            size: len,
            floor: start,
            ceiling: layout.low_end(),
        };
        if start.checked_add(len).is_none_or(|e| e > layout.low_end()) {
            return Err(too_big);
        }
        let count = usize::try_from(len).map_err(|_| too_big)?;
        mem.read_exact_volatile_from(GuestAddress(start), file, count)?;
        let name_addr = strings + LOADER_NAME.len() as u64;
        let mut name = name.as_bytes().to_vec();
        name.truncate(0xff);
        name.push(0);
        mem.write_slice(&name, GuestAddress(name_addr))?;
        let entry: [u32; 4] = [start as u32, (start + len) as u32, name_addr as u32, 0];
        mem.write_obj(entry, GuestAddress(BOOT_INFO_ADDR + MODS_OFFSET))?;
        mods_count = 1;
    }

    let e820 = layout.e820();
    for (i, e) in e820.iter().enumerate() {
        // Each entry: size of the rest (20), base, length, type; packed.
        let mut raw = [0u8; 24];
        raw[0..4].copy_from_slice(&20u32.to_le_bytes());
        raw[4..12].copy_from_slice(&e.addr.to_le_bytes());
        raw[12..20].copy_from_slice(&e.size.to_le_bytes());
        raw[20..24].copy_from_slice(&e.kind.to_le_bytes());
        mem.write_slice(
            &raw,
            GuestAddress(BOOT_INFO_ADDR + MMAP_OFFSET + 24 * i as u64),
        )?;
    }

    // mem_lower: KiB of RAM from 0 (up to 640 KiB); mem_upper: KiB of RAM from 1 MiB up to the
    // first hole.
    let mem_lower = (crate::layout::EBDA_START >> 10) as u32;
    let mem_upper = ((layout.low_end() - HIMEM_START) >> 10) as u32;
    let mut info = [0u32; 22];
    info[0] = flags;
    info[1] = mem_lower;
    info[2] = mem_upper;
    info[4] = CMDLINE_ADDR as u32;
    info[5] = mods_count;
    info[6] = (BOOT_INFO_ADDR + MODS_OFFSET) as u32;
    info[11] = (24 * e820.len()) as u32;
    info[12] = (BOOT_INFO_ADDR + MMAP_OFFSET) as u32;
    info[16] = strings as u32;
    mem.write_obj(info, GuestAddress(BOOT_INFO_ADDR))?;

    Ok(BootEntry {
        mode: EntryMode::Protected32,
        rip: entry,
        rax: u64::from(MULTIBOOT_BOOTLOADER_MAGIC),
        rbx: BOOT_INFO_ADDR,
        rsi: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for w in [
            HEADER_MAGIC,
            flags,
            0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    }

    #[test]
    fn finds_header_only_with_a_valid_checksum_in_the_window() {
        let mut img = vec![0u8; 64];
        img.extend(header(FLAG_MEMORY_INFO));
        assert_eq!(
            find_header(&img),
            Some(Header {
                offset: 64,
                flags: FLAG_MEMORY_INFO
            })
        );
        let n = img.len();
        img[n - 1] ^= 1;
        assert_eq!(find_header(&img), None);
        let mut late = vec![0u8; MULTIBOOT_SEARCH];
        late.extend(header(0));
        assert_eq!(find_header(&late), None);
        // Truncated at the very end of the buffer: no panic.
        assert_eq!(find_header(&header(0)[..10]), None);
    }

    #[test]
    fn garbage_elf_headers_are_errors_not_panics() {
        for len in [0, 4, 5, 6, 0x20, 0x34, 0x40] {
            let mut img = b"\x7fELF\x01\x01".to_vec();
            img.resize(len.max(6), 0xff);
            assert!(elf_segments(&img).is_err());
        }
        let mut img = b"\x7fELF\x02\x01".to_vec();
        img.resize(0x40, 0);
        // phentsize 56, phnum 0xffff at phoff 0x40: headers past the end.
        img[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        img[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes());
        img[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        assert!(elf_segments(&img).is_err());
        // Program header offset near u64::MAX: the offset arithmetic must not overflow.
        img[0x20..0x28].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        img[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        assert!(elf_segments(&img).is_err());
    }

    #[test]
    fn address_fields_describe_one_segment() {
        // Header at file offset 0, image loaded at 1 MiB, entry 12 bytes in, 4 KiB of bss.
        let mut img = header(FLAG_ADDRESS_FIELDS);
        for w in [0x10_0000u32, 0x10_0000, 0, 0x10_2000, 0x10_0030] {
            img.extend_from_slice(&w.to_le_bytes());
        }
        img.resize(0x40, 0x90);
        let h = find_header(&img).unwrap();
        let (segs, entry) = address_field_segments(&img, h).unwrap();
        assert_eq!(entry, 0x10_0030);
        assert_eq!(
            (segs[0].offset, segs[0].file_len, segs[0].mem_len),
            (0, 0x40, 0x2000)
        );
        // header_addr before load_addr is malformed.
        let mut bad_img = header(FLAG_ADDRESS_FIELDS);
        for w in [0x10_0000u32, 0x20_0000, 0, 0, 0] {
            bad_img.extend_from_slice(&w.to_le_bytes());
        }
        assert!(address_field_segments(&bad_img, find_header(&bad_img).unwrap()).is_err());
    }
}
