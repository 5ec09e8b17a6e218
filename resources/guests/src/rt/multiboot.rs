//! Multiboot v1 information, copied into the program's own statics at
//! start-up (before anything touches low memory, where the loader may have
//! put the information block).

use super::Racy;
use super::sys::MB_INFO;
use core::sync::atomic::Ordering;

/// EAX at entry from a multiboot v1 loader.
pub const BOOT_MAGIC: u32 = 0x2BAD_B002;

pub const FLAG_MEM: u32 = 1 << 0;
pub const FLAG_CMDLINE: u32 = 1 << 2;
pub const FLAG_MODS: u32 = 1 << 3;
pub const FLAG_MMAP: u32 = 1 << 6;

pub const MAX_CMDLINE: usize = 4096;
pub const MAX_MMAP: usize = 128;
pub const MAX_MODULES: usize = 16;
pub const MAX_MODULE_STRING: usize = 256;

/// Memory map entry types.
pub const MEMORY_AVAILABLE: u32 = 1;
pub const MEMORY_RESERVED: u32 = 2;
pub const MEMORY_ACPI_RECLAIMABLE: u32 = 3;
pub const MEMORY_NVS: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub base: u64,
    pub length: u64,
    /// 1 = available RAM, 2 = reserved, 3 = ACPI reclaimable, 4 = NVS, ...
    pub kind: u32,
}

impl MemoryRegion {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.length)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Module {
    pub start: u32,
    pub end: u32,
    string: [u8; MAX_MODULE_STRING],
    string_len: usize,
}

impl Module {
    /// The module's string (usually its command line), possibly truncated.
    pub fn string(&self) -> &str {
        utf8_prefix(&self.string[..self.string_len])
    }
}

struct BootInfo {
    info_addr: u32,
    flags: u32,
    mem_lower: u32,
    mem_upper: u32,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    mmap: [MemoryRegion; MAX_MMAP],
    mmap_len: usize,
    mmap_truncated: bool,
    modules: [Module; MAX_MODULES],
    modules_len: usize,
}

static INFO: Racy<BootInfo> = Racy::new(BootInfo {
    info_addr: 0,
    flags: 0,
    mem_lower: 0,
    mem_upper: 0,
    cmdline: [0; MAX_CMDLINE],
    cmdline_len: 0,
    mmap: [MemoryRegion {
        base: 0,
        length: 0,
        kind: 0,
    }; MAX_MMAP],
    mmap_len: 0,
    mmap_truncated: false,
    modules: [Module {
        start: 0,
        end: 0,
        string: [0; MAX_MODULE_STRING],
        string_len: 0,
    }; MAX_MODULES],
    modules_len: 0,
});

fn info() -> &'static BootInfo {
    // SAFETY: written only by `init`, before `main`, on the single ring-3 thread.
    unsafe { &*INFO.get() }
}

fn rd8(addr: u64) -> u8 {
    // SAFETY: the loader-provided block lies in identity-mapped RAM below 4 GiB.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn rd32(addr: u64) -> u32 {
    // SAFETY: as above.
    unsafe { core::ptr::read_unaligned(addr as *const u32) }
}

fn rd64(addr: u64) -> u64 {
    // SAFETY: as above.
    unsafe { core::ptr::read_unaligned(addr as *const u64) }
}

/// Copies a NUL-terminated string into `buf`; returns its (clipped) length.
fn copy_cstr(addr: u64, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        let b = rd8(addr + n as u64);
        if b == 0 {
            break;
        }
        buf[n] = b;
        n += 1;
    }
    n
}

fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        // SAFETY: `valid_up_to` bytes are valid UTF-8.
        Err(e) => unsafe { core::str::from_utf8_unchecked(&b[..e.valid_up_to()]) },
    }
}

/// Copies everything the runtime exposes out of the loader's block.
pub(crate) fn init() {
    // SAFETY: single-threaded start-up; nothing reads INFO yet.
    let bi = unsafe { &mut *INFO.get() };
    let addr = MB_INFO.load(Ordering::Relaxed) as u64;
    bi.info_addr = addr as u32;
    if addr == 0 {
        return;
    }
    let flags = rd32(addr);
    bi.flags = flags;
    if flags & FLAG_MEM != 0 {
        bi.mem_lower = rd32(addr + 4);
        bi.mem_upper = rd32(addr + 8);
    }
    if flags & FLAG_CMDLINE != 0 {
        let p = rd32(addr + 16) as u64;
        if p != 0 {
            bi.cmdline_len = copy_cstr(p, &mut bi.cmdline[..MAX_CMDLINE - 1]);
        }
    }
    if flags & FLAG_MODS != 0 {
        let count = rd32(addr + 20) as usize;
        let table = rd32(addr + 24) as u64;
        for i in 0..count.min(MAX_MODULES) {
            let m = table + 16 * i as u64;
            let module = &mut bi.modules[i];
            module.start = rd32(m);
            module.end = rd32(m + 4);
            let s = rd32(m + 8) as u64;
            if s != 0 {
                module.string_len = copy_cstr(s, &mut module.string);
            }
            bi.modules_len = i + 1;
        }
    }
    if flags & FLAG_MMAP != 0 {
        let len = rd32(addr + 44) as u64;
        let start = rd32(addr + 48) as u64;
        let mut p = start;
        while p + 24 <= start + len {
            // Each entry: size (u32, not counting itself), base u64, length u64, type u32.
            let size = rd32(p) as u64;
            if size < 20 {
                break;
            }
            if bi.mmap_len == MAX_MMAP {
                bi.mmap_truncated = true;
                break;
            }
            bi.mmap[bi.mmap_len] = MemoryRegion {
                base: rd64(p + 4),
                length: rd64(p + 12),
                kind: rd32(p + 20),
            };
            bi.mmap_len += 1;
            p += size + 4;
        }
    }
}

/// Physical address of the loader's information block (EBX at entry).
pub fn info_address() -> u32 {
    info().info_addr
}

/// The `flags` word of the information block.
pub fn flags() -> u32 {
    info().flags
}

/// Lower memory in KiB (from 0), if the loader provided it.
pub fn mem_lower() -> Option<u32> {
    (info().flags & FLAG_MEM != 0).then_some(info().mem_lower)
}

/// Upper memory in KiB (from 1 MiB), if the loader provided it.
pub fn mem_upper() -> Option<u32> {
    (info().flags & FLAG_MEM != 0).then_some(info().mem_upper)
}

/// The kernel command line ("" if none). Truncated to 4095 bytes.
pub fn cmdline() -> &'static str {
    let bi = info();
    utf8_prefix(&bi.cmdline[..bi.cmdline_len])
}

/// The value of the first `key=value` word of the command line.
pub fn cmdline_value(key: &str) -> Option<&'static str> {
    cmdline().split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The memory map (empty if the loader gave none).
pub fn memory_map() -> &'static [MemoryRegion] {
    let bi = info();
    &bi.mmap[..bi.mmap_len]
}

/// Iterator over the memory map entries.
pub fn memory_map_iter() -> core::slice::Iter<'static, MemoryRegion> {
    memory_map().iter()
}

/// True if the loader's memory map had more than [`MAX_MMAP`] entries.
pub fn memory_map_truncated() -> bool {
    info().mmap_truncated
}

/// The boot modules (start, end, string).
pub fn modules() -> &'static [Module] {
    let bi = info();
    &bi.modules[..bi.modules_len]
}
