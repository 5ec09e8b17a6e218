//! Loading a kernel and preparing what its boot protocol promises it at entry.
//!
//! The format is detected from the file: a multiboot v1 header in the first 8 KiB wins (kernel
//! unit-test binaries are ELFs too), then an ELF with a PVH entry note (e.g. an uncompressed
//! vmlinux), then a Linux bzImage.

mod linux;
mod multiboot;
mod pvh;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestMemoryMmap;
use crate::gdt::GDT;
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX, GDT_ADDR, MemoryLayout};

pub use multiboot::MULTIBOOT_BOOTLOADER_MAGIC;

/// The CPU mode a boot protocol enters the kernel in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit protected mode, paging off, flat segments (PVH, multiboot).
    Protected32,
    /// 64-bit long mode on an identity map (Linux 64-bit boot protocol).
    Long64,
}

/// Registers the boot vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// CPU mode at entry.
    pub mode: EntryMode,
    /// Entry point.
    pub rip: u64,
    /// EAX (the multiboot magic).
    pub rax: u64,
    /// EBX (multiboot info or PVH start_info address).
    pub rbx: u64,
    /// RSI (Linux zero page address).
    pub rsi: u64,
}

/// Which boot protocol a kernel image uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A Linux bzImage, entered at its 64-bit entry point.
    BzImage,
    /// An ELF with a XEN_ELFNOTE_PHYS32_ENTRY note, entered through PVH.
    PvhElf,
    /// A multiboot v1 kernel.
    Multiboot,
}

/// Errors while loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file failed.
    #[error("cannot read {what}: {source}")]
    Io {
        /// The file's role.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a format we boot.
    #[error(
        "unrecognised kernel image: not a Linux bzImage, an ELF with a PVH entry note, or a multiboot v1 kernel"
    )]
    UnknownFormat,
    /// An ELF without an entry we can use.
    #[error("ELF kernel has neither a PVH entry note nor a multiboot header")]
    ElfWithoutEntry,
    /// An ELF that linux-loader cannot load as a PVH kernel.
    #[error(
        "cannot load ELF kernel (it needs a PVH entry note or a multiboot header, and its segments must fit in guest RAM): {0}"
    )]
    NotBootableElf(linux_loader::loader::Error),
    /// linux-loader refused the image.
    #[error("cannot load kernel: {0}")]
    Loader(#[from] linux_loader::loader::Error),
    /// A bzImage without a 64-bit entry point.
    #[error(
        "bzImage has no 64-bit entry point (boot protocol {0:#x}, needs 2.12 with XLF_KERNEL_64)"
    )]
    NoLongModeEntry(u16),
    /// The command line does not fit.
    #[error("command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The initramfs does not fit.
    #[error(
        "initramfs of {size} bytes does not fit in guest RAM between {floor:#x} and {ceiling:#x}"
    )]
    InitramfsTooBig {
        /// Its size.
        size: u64,
        /// Lowest usable address.
        floor: u64,
        /// Highest usable address (exclusive).
        ceiling: u64,
    },
    /// A kernel segment that would land outside usable RAM.
    #[error(
        "kernel segment {start:#x}-{end:#x} is not in guest RAM between 1 MiB and {ram_end:#x}"
    )]
    SegmentOutsideRam {
        /// Segment start.
        start: u64,
        /// Segment end.
        end: u64,
        /// End of RAM below 4 GiB.
        ram_end: u64,
    },
    /// A malformed kernel image (multiboot header, ELF headers).
    #[error("malformed kernel image: {0}")]
    Malformed(String),
    /// Writing guest memory failed.
    #[error("cannot write boot data to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What to boot.
#[derive(Debug)]
pub struct KernelImage<'a> {
    /// The kernel file.
    pub kernel: &'a mut File,
    /// An initramfs (for multiboot: the first module), with a name for multiboot's module string.
    pub initramfs: Option<(&'a mut File, &'a str)>,
    /// The command line.
    pub cmdline: &'a str,
}

/// The multiboot header search window (multiboot spec 3.1.1).
const MULTIBOOT_SEARCH: usize = 8192;

/// Detects the format of `kernel` from its first bytes.
pub fn detect(kernel: &mut File) -> Result<KernelFormat, Error> {
    let mut head = Vec::with_capacity(MULTIBOOT_SEARCH);
    kernel
        .seek(SeekFrom::Start(0))
        .and_then(|_| {
            kernel
                .by_ref()
                .take(MULTIBOOT_SEARCH as u64)
                .read_to_end(&mut head)
        })
        .map_err(|source| Error::Io {
            what: "kernel",
            source,
        })?;
    if multiboot::find_header(&head).is_some() {
        Ok(KernelFormat::Multiboot)
    } else if head.starts_with(b"\x7fELF") {
        Ok(KernelFormat::PvhElf)
    } else if head.get(0x202..0x206) == Some(b"HdrS") {
        Ok(KernelFormat::BzImage)
    } else {
        Err(Error::UnknownFormat)
    }
}

/// Loads `image` into `mem` and writes the GDT, command line and boot information its protocol
/// needs. `rsdp` is the ACPI RSDP address to hand over where the protocol has a field for it.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: KernelImage<'_>,
    rsdp: u64,
) -> Result<BootEntry, Error> {
    let format = detect(image.kernel)?;
    image
        .kernel
        .seek(SeekFrom::Start(0))
        .map_err(|source| Error::Io {
            what: "kernel",
            source,
        })?;
    mem.write_obj(GDT, GuestAddress(GDT_ADDR))?;
    match format {
        KernelFormat::BzImage => linux::load(mem, layout, image, rsdp),
        KernelFormat::PvhElf => pvh::load(mem, layout, image, rsdp),
        KernelFormat::Multiboot => multiboot::load(mem, layout, image),
    }
}

/// Writes the NUL-terminated command line at [`CMDLINE_ADDR`]; `max` is the kernel's own limit
/// (including the NUL).
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), Error> {
    let max = max.min(CMDLINE_MAX);
    if cmdline.len() >= max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: max - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))?;
    Ok(())
}

/// The length of `file` (whose role is `what`), leaving its position at the start.
fn file_len(file: &mut File, what: &'static str) -> Result<u64, Error> {
    file.seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(|source| Error::Io { what, source })
}

/// Reads `file` into guest memory at the highest page-aligned address where it ends below
/// `ceiling` and starts at or above `floor`; returns (address, size).
fn load_high(
    mem: &GuestMemoryMmap,
    file: &mut File,
    floor: u64,
    ceiling: u64,
) -> Result<(u64, u64), Error> {
    let size = file_len(file, "initramfs")?;
    let addr = ceiling
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= floor)
        .ok_or(Error::InitramfsTooBig {
            size,
            floor,
            ceiling,
        })?;
    let len = usize::try_from(size).map_err(|_| Error::InitramfsTooBig {
        size,
        floor,
        ceiling,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(Error::Memory)?;
    Ok((addr, size))
}

/// Checks that `[addr, addr + len)` is RAM, so loaders fail cleanly instead of writing partially.
fn check_ram(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|len| len == 0 || mem.check_range(GuestAddress(addr), len))
}
