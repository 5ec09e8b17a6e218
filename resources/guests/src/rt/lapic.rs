//! Local APIC (xAPIC, MMIO at 0xfee00000).

use super::io::{mmio_read32, mmio_write32};

pub const BASE: u64 = 0xfee0_0000;

pub const REG_ID: u32 = 0x20;
pub const REG_VERSION: u32 = 0x30;
pub const REG_TPR: u32 = 0x80;
pub const REG_EOI: u32 = 0xb0;
pub const REG_SVR: u32 = 0xf0;
pub const REG_ESR: u32 = 0x280;
pub const REG_ICR_LOW: u32 = 0x300;
pub const REG_ICR_HIGH: u32 = 0x310;
pub const REG_LVT_TIMER: u32 = 0x320;
pub const REG_TIMER_INITIAL: u32 = 0x380;
pub const REG_TIMER_CURRENT: u32 = 0x390;
pub const REG_TIMER_DIVIDE: u32 = 0x3e0;

pub const SVR_ENABLE: u32 = 1 << 8;
/// Spurious vector programmed by [`enable`]; its stub only does `iretq`.
pub const SPURIOUS_VECTOR: u8 = 0xff;

pub const ICR_FIXED: u32 = 0 << 8;
pub const ICR_INIT: u32 = 5 << 8;
pub const ICR_STARTUP: u32 = 6 << 8;
pub const ICR_DELIVERY_PENDING: u32 = 1 << 12;
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
pub const ICR_TRIGGER_LEVEL: u32 = 1 << 15;

pub fn read(reg: u32) -> u32 {
    // SAFETY: the LAPIC page is identity mapped; registers are 32-bit aligned.
    unsafe { mmio_read32(BASE + reg as u64) }
}

pub fn write(reg: u32, v: u32) {
    // SAFETY: as above.
    unsafe { mmio_write32(BASE + reg as u64, v) }
}

/// This CPU's xAPIC id.
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Software-enables the LAPIC (SVR bit 8, spurious vector 0xff) and
/// accepts all priorities (TPR = 0).
pub fn enable() {
    write(REG_TPR, 0);
    write(REG_SVR, SVR_ENABLE | SPURIOUS_VECTOR as u32);
}

pub fn eoi() {
    write(REG_EOI, 0);
}

/// Waits (bounded) until the previous IPI has been sent. Returns false on timeout.
pub fn wait_icr_idle() -> bool {
    for _ in 0..10_000_000 {
        if read(REG_ICR_LOW) & ICR_DELIVERY_PENDING == 0 {
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Sends an IPI: destination APIC id into ICR high (0x310), then `icr_low`
/// (vector, delivery mode, level, ...) into ICR low (0x300), which sends it.
pub fn send_ipi(dest: u32, icr_low: u32) {
    wait_icr_idle();
    write(REG_ICR_HIGH, dest << 24);
    write(REG_ICR_LOW, icr_low);
}

/// Sends a fixed, edge-triggered interrupt with `vector` to `dest`.
pub fn send_fixed_ipi(dest: u32, vector: u8) {
    send_ipi(dest, ICR_FIXED | ICR_LEVEL_ASSERT | vector as u32);
}
