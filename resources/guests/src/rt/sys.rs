//! The fixed-address system tables (page tables, IDT, GDT, TSS + I/O
//! bitmap) and the
//! statics shared with the ring-0 assembly in `boot.rs`.
//!
//! Everything here except the IDT gates is computed at compile time, so the
//! ring-0 stub only loads registers. The tables live in user-accessible,
//! writable memory: ring-3 code fills the IDT and extends the page tables.

use core::sync::atomic::{AtomicU32, AtomicU64};

use super::Racy;

/// Physical (= virtual) address of [`GUEST_SYSTABLES`]; `link.ld` places the
/// `.systables` section there and asserts it.
pub const SYSTABLES_ADDR: u64 = 0x10_1000;
/// PML4: one entry, covering 0..512 GiB.
pub const PML4_ADDR: u64 = SYSTABLES_ADDR;
/// PDPT: entries 0..3 (0..4 GiB) preset; 4.. filled by `paging`.
pub const PDPT_ADDR: u64 = SYSTABLES_ADDR + 0x1000;
/// Four page directories of 2 MiB pages for 0..4 GiB.
pub const PD_ADDR: u64 = SYSTABLES_ADDR + 0x2000;
/// 256 16-byte interrupt gates.
pub const IDT_ADDR: u64 = SYSTABLES_ADDR + 0x6000;
/// GDT (see the selector constants).
pub const GDT_ADDR: u64 = SYSTABLES_ADDR + 0x7000;
/// 64-bit TSS (104 bytes); RSP0 at offset 4.
pub const TSS_ADDR: u64 = GDT_ADDR + 0x80;
/// Size of the 64-bit TSS proper.
pub const TSS_SIZE: usize = 104;
/// I/O permission bitmap: one bit per port (all clear = all ports allowed),
/// followed by the required 0xff byte. It sits right after the TSS.
pub const IOMAP_SIZE: usize = 8192 + 1;
/// Total size of the system tables.
pub const SYSTABLES_SIZE: usize = 0xa000;

/// Number of GDT slots (8 bytes each).
pub const GDT_ENTRIES: usize = 8;
pub const GDT_LIMIT: u16 = (GDT_ENTRIES * 8 - 1) as u16;
pub const IDT_LIMIT: u16 = 256 * 16 - 1;

pub const SEL_KERNEL_CODE64: u16 = 0x08;
pub const SEL_KERNEL_DATA: u16 = 0x10;
pub const SEL_USER_CODE64: u16 = 0x18 | 3;
pub const SEL_USER_DATA: u16 = 0x20 | 3;
pub const SEL_TSS: u16 = 0x28;
/// 32-bit flat code segment, used only by the AP trampoline.
pub const SEL_KERNEL_CODE32: u16 = 0x38;

pub const PTE_P: u64 = 1 << 0;
pub const PTE_W: u64 = 1 << 1;
pub const PTE_U: u64 = 1 << 2;
pub const PTE_PWT: u64 = 1 << 3;
pub const PTE_PCD: u64 = 1 << 4;
pub const PTE_PS: u64 = 1 << 7;

/// Ring-0 stack of the boot CPU (TSS.RSP0): interrupt and exception handlers.
pub const BOOT_STACK_SIZE: usize = 8 * 1024;
/// Ring-3 stack of the boot CPU: the Rust test body.
pub const USER_STACK_SIZE: usize = 256 * 1024;
/// log2 of the ring-0 stack size of each AP (1 KiB; APs only `sti; hlt`).
pub const AP_STACK_SHIFT: u32 = 10;
/// APs are indexed by their 8-bit xAPIC id.
pub const MAX_APIC_IDS: usize = 256;

#[repr(C, align(4096))]
pub struct SysTables {
    pub pml4: [u64; 512],
    pub pdpt: [u64; 512],
    pub pd: [[u64; 512]; 4],
    pub idt: [u64; 512],
    pub gdt: [u64; 16],
    pub tss: [u32; TSS_SIZE / 4],
    pub iomap: [u8; IOMAP_SIZE],
    _pad: [u8; PAD],
}

const PAD: usize = SYSTABLES_SIZE - 0x7000 - 16 * 8 - TSS_SIZE - IOMAP_SIZE;

const fn tss_descriptor_low(base: u64, limit: u64) -> u64 {
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL0, available 64-bit TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56)
}

impl SysTables {
    const fn new() -> Self {
        let mut t = SysTables {
            pml4: [0; 512],
            pdpt: [0; 512],
            pd: [[0; 512]; 4],
            idt: [0; 512],
            gdt: [0; 16],
            tss: [0; TSS_SIZE / 4],
            iomap: [0; IOMAP_SIZE],
            _pad: [0; PAD],
        };
        let table = PTE_P | PTE_W | PTE_U;
        t.pml4[0] = PDPT_ADDR | table;
        let mut g = 0;
        while g < 4 {
            t.pdpt[g] = (PD_ADDR + (g as u64) * 4096) | table;
            let mut i = 0;
            while i < 512 {
                let addr = ((g as u64) << 30) | ((i as u64) << 21);
                // 3..4 GiB is the MMIO hole (LAPIC, IOAPIC, PCI): uncached.
                let cache = if g == 3 { PTE_PCD | PTE_PWT } else { 0 };
                t.pd[g][i] = addr | table | PTE_PS | cache;
                i += 1;
            }
            g += 1;
        }
        t.gdt[0] = 0;
        t.gdt[1] = 0x00af_9a00_0000_ffff; // 0x08 kernel code, 64-bit
        t.gdt[2] = 0x00cf_9200_0000_ffff; // 0x10 kernel data
        t.gdt[3] = 0x00af_fa00_0000_ffff; // 0x18 user code, 64-bit, DPL3
        t.gdt[4] = 0x00cf_f200_0000_ffff; // 0x20 user data, DPL3
        // 0x28: TSS (16 bytes), limit covering the I/O bitmap.
        t.gdt[5] = tss_descriptor_low(TSS_ADDR, (TSS_SIZE + IOMAP_SIZE - 1) as u64);
        t.gdt[6] = TSS_ADDR >> 32;
        t.gdt[7] = 0x00cf_9a00_0000_ffff; // 0x38 kernel code, 32-bit (AP trampoline)
        // I/O map base (offset 102): the bitmap right after the TSS. All
        // ports are allowed there too, not only through IOPL=3: some
        // hypervisors (e.g. kvm_pvm, which runs ring 3 natively with the
        // hardware IOPL forced to 0) emulate a faulting `in`/`out` and then
        // consult the TSS bitmap rather than the guest's IOPL.
        t.tss[25] = (TSS_SIZE as u32) << 16;
        t.iomap[IOMAP_SIZE - 1] = 0xff;
        t
    }
}

/// The system tables at [`SYSTABLES_ADDR`].
#[unsafe(no_mangle)]
#[unsafe(link_section = ".systables")]
pub static GUEST_SYSTABLES: Racy<SysTables> = Racy::new(SysTables::new());

const _: () = assert!(core::mem::size_of::<SysTables>() == SYSTABLES_SIZE);
const _: () = assert!(core::mem::offset_of!(SysTables, idt) as u64 == IDT_ADDR - SYSTABLES_ADDR);
const _: () = assert!(core::mem::offset_of!(SysTables, gdt) as u64 == GDT_ADDR - SYSTABLES_ADDR);
const _: () = assert!(core::mem::offset_of!(SysTables, tss) as u64 == TSS_ADDR - SYSTABLES_ADDR);
const _: () = assert!(core::mem::offset_of!(SysTables, pd) as u64 == PD_ADDR - SYSTABLES_ADDR);

/// Pointer to the tables (for ring-3 code that edits them).
pub fn systables() -> *mut SysTables {
    GUEST_SYSTABLES.get()
}

#[repr(C, align(16))]
pub struct Stack<const N: usize>(Racy<[u8; N]>);

impl<const N: usize> Stack<N> {
    const fn new() -> Self {
        Stack(Racy::new([0; N]))
    }
}

pub static BOOT_STACK: Stack<BOOT_STACK_SIZE> = Stack::new();
pub static USER_STACK: Stack<USER_STACK_SIZE> = Stack::new();
pub static AP_STACKS: Stack<{ MAX_APIC_IDS << AP_STACK_SHIFT }> = Stack::new();

/// Interrupt counters, one per vector, incremented by the ring-0 stubs for
/// vectors 32..=254.
pub static IRQ_COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
/// Bit `id` is set by the AP with APIC id `id` once it is in long mode.
pub static AP_ONLINE: [AtomicU64; MAX_APIC_IDS / 64] =
    [const { AtomicU64::new(0) }; MAX_APIC_IDS / 64];
/// Number of APs that reached long mode.
pub static AP_COUNT: AtomicU32 = AtomicU32::new(0);
/// Times the AP with APIC id `id` woke from `hlt` (once per interrupt it took).
pub static AP_WAKEUPS: [AtomicU32; MAX_APIC_IDS] = [const { AtomicU32::new(0) }; MAX_APIC_IDS];
/// EAX and EBX at entry (multiboot magic and information block address).
pub static MB_MAGIC: AtomicU32 = AtomicU32::new(0);
pub static MB_INFO: AtomicU32 = AtomicU32::new(0);

unsafe extern "C" {
    /// 256 interrupt entry stubs, 16 bytes apart (boot.rs).
    static guest_isr_stubs: u8;
    /// The real-mode AP start-up code, to be copied to a page below 1 MiB.
    static guest_ap_trampoline_start: u8;
    static guest_ap_trampoline_end: u8;
    /// Linker-script symbols: first and one-past-last byte of the image
    /// (including .bss, stacks and page-table pool), page aligned.
    static __image_start: u8;
    static __image_end: u8;
}

/// `[start, end)` of the program image in physical memory.
pub fn image_range() -> (u64, u64) {
    (
        &raw const __image_start as u64,
        &raw const __image_end as u64,
    )
}

/// The AP trampoline code (position independent; runs at any page < 1 MiB).
pub fn ap_trampoline() -> &'static [u8] {
    let start = &raw const guest_ap_trampoline_start;
    let end = &raw const guest_ap_trampoline_end;
    // SAFETY: both symbols delimit one read-only byte range in .rodata.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Fills all 256 IDT gates. Runs at ring 3 before interrupts are enabled.
pub(crate) fn fill_idt() {
    let base = &raw const guest_isr_stubs as u64;
    let idt = IDT_ADDR as *mut u64;
    for v in 0..256u64 {
        let handler = base + v * 16;
        // Exceptions keep DPL0; vectors >= 32 may also be raised with `int n` from ring 3.
        let dpl: u64 = if v >= 32 { 3 } else { 0 };
        let low = (handler & 0xffff)
            | ((SEL_KERNEL_CODE64 as u64) << 16)
            | ((0x8e | (dpl << 5)) << 40) // present, 64-bit interrupt gate
            | (((handler >> 16) & 0xffff) << 48);
        let high = handler >> 32;
        // SAFETY: the IDT is identity mapped, writable from ring 3 and nothing
        // uses it concurrently (interrupts are off, APs are not started yet).
        unsafe {
            idt.add(2 * v as usize).write_volatile(low);
            idt.add(2 * v as usize + 1).write_volatile(high);
        }
    }
}
