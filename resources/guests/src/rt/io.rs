//! Port I/O (allowed at CPL3 because IOPL=3), MMIO and a few CPU helpers.

use core::arch::asm;

#[inline]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no effect on Rust memory.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

#[inline]
pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as above.
    unsafe {
        asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

#[inline]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as above.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

#[inline]
pub fn outb(port: u16, v: u8) {
    // SAFETY: as above.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

#[inline]
pub fn outw(port: u16, v: u16) {
    // SAFETY: as above.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags))
    };
}

#[inline]
pub fn outl(port: u16, v: u32) {
    // SAFETY: as above.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    };
}

macro_rules! mmio {
    ($read:ident, $write:ident, $t:ty) => {
        /// Volatile read of a physical (identity-mapped) address.
        ///
        /// # Safety
        /// `addr` must be mapped, suitably aligned, and reading it must not
        /// break any Rust aliasing assumptions.
        #[inline]
        pub unsafe fn $read(addr: u64) -> $t {
            // SAFETY: guaranteed by the caller.
            unsafe { core::ptr::read_volatile(addr as *const $t) }
        }

        /// Volatile write to a physical (identity-mapped) address.
        ///
        /// # Safety
        /// `addr` must be mapped, suitably aligned, and must not be memory
        /// the program uses.
        #[inline]
        pub unsafe fn $write(addr: u64, v: $t) {
            // SAFETY: guaranteed by the caller.
            unsafe { core::ptr::write_volatile(addr as *mut $t, v) }
        }
    };
}

mmio!(mmio_read8, mmio_write8, u8);
mmio!(mmio_read16, mmio_write16, u16);
mmio!(mmio_read32, mmio_write32, u32);
mmio!(mmio_read64, mmio_write64, u64);

/// Disables interrupts (legal at CPL3 with IOPL=3; where the hypervisor
/// forces the hardware IOPL to 0, the ring-0 #GP handler emulates it).
#[inline]
pub fn cli() {
    // SAFETY: only changes RFLAGS.IF.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Enables interrupts (legal at CPL3 with IOPL=3; where the hypervisor
/// forces the hardware IOPL to 0, the ring-0 #GP handler emulates it).
#[inline]
pub fn sti() {
    // SAFETY: only changes RFLAGS.IF; the handlers preserve all registers.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// RFLAGS as `pushfq` sees it. Under hypervisors that run ring 3 natively
/// this may show the hardware flags (IF=1, IOPL=0), not the guest's.
#[inline]
pub fn rflags() -> u64 {
    let v: u64;
    // SAFETY: reads RFLAGS through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// The current code segment selector (CS & 3 is the CPL).
#[inline]
pub fn read_cs() -> u16 {
    let v: u16;
    // SAFETY: reads a segment register.
    unsafe { asm!("mov {0:x}, cs", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

#[inline]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: reads the time-stamp counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    ((hi as u64) << 32) | lo as u64
}

/// Re-bases the two 8259 PICs to vectors 0x20..0x2f (away from the
/// exception vectors) and masks all their inputs. Firmware may have left
/// them at 0x08 with the timer unmasked; on machines without a PIC the
/// writes go nowhere.
pub fn disable_legacy_pic() {
    const PIC1: u16 = 0x20;
    const PIC2: u16 = 0xa0;
    outb(PIC1, 0x11); // ICW1: edge, cascade, ICW4 follows
    outb(PIC2, 0x11);
    outb(PIC1 + 1, 0x20); // ICW2: vector base
    outb(PIC2 + 1, 0x28);
    outb(PIC1 + 1, 1 << 2); // ICW3: slave on IRQ2
    outb(PIC2 + 1, 2);
    outb(PIC1 + 1, 0x01); // ICW4: 8086 mode
    outb(PIC2 + 1, 0x01);
    outb(PIC1 + 1, 0xff); // OCW1: mask everything
    outb(PIC2 + 1, 0xff);
}
