//! Starting application processors.
//!
//! The real-mode trampoline (boot.rs) is copied to [`TRAMPOLINE_ADDR`]; an
//! AP started with SIPI vector [`SIPI_VECTOR`] switches to long mode with
//! the boot CPU's GDT, page tables and IDT, takes a 1 KiB ring-0 stack
//! indexed by its APIC id, sets its bit in the online mask, enables its
//! local APIC (spurious vector 0xff), increments the AP counter and then
//! idles in `sti; hlt`, counting the interrupts that wake it
//! ([`wakeups`]).

use core::sync::atomic::Ordering;

use super::lapic;
use super::sys::{AP_COUNT, AP_ONLINE, AP_WAKEUPS, MAX_APIC_IDS, ap_trampoline};
use super::time::delay_us;

pub const TRAMPOLINE_ADDR: u64 = 0x8000;
pub const SIPI_VECTOR: u8 = (TRAMPOLINE_ADDR >> 12) as u8;

/// Copies the AP trampoline to [`TRAMPOLINE_ADDR`] and returns the SIPI
/// vector to use. Call only after start-up (the multiboot block may lie
/// there before the runtime copied it).
pub fn install_trampoline() -> u8 {
    let code = ap_trampoline();
    // SAFETY: 0x8000.. is low RAM the program does not otherwise use, identity mapped.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), TRAMPOLINE_ADDR as *mut u8, code.len())
    };
    SIPI_VECTOR
}

/// Sends INIT, then two STARTUP IPIs with `vector`, with the customary
/// pauses (about 10 ms and 200 us; TSC based, approximate).
pub fn start_ap(apic_id: u32, vector: u8) {
    lapic::send_ipi(apic_id, lapic::ICR_INIT | lapic::ICR_LEVEL_ASSERT);
    lapic::wait_icr_idle();
    delay_us(10_000);
    for _ in 0..2 {
        lapic::send_ipi(
            apic_id,
            lapic::ICR_STARTUP | lapic::ICR_LEVEL_ASSERT | vector as u32,
        );
        lapic::wait_icr_idle();
        delay_us(200);
    }
}

/// Sets bit `id` in the online mask (the boot CPU uses this for itself).
pub fn mark_online(id: u32) {
    if (id as usize) < MAX_APIC_IDS {
        AP_ONLINE[id as usize / 64].fetch_or(1 << (id % 64), Ordering::SeqCst);
    }
}

pub fn is_online(id: u32) -> bool {
    (id as usize) < MAX_APIC_IDS
        && AP_ONLINE[id as usize / 64].load(Ordering::SeqCst) & (1 << (id % 64)) != 0
}

/// The online mask: bit `id` of word `id / 64`.
pub fn online_mask() -> [u64; MAX_APIC_IDS / 64] {
    core::array::from_fn(|i| AP_ONLINE[i].load(Ordering::SeqCst))
}

/// Number of APs that reached long mode.
pub fn ap_count() -> u32 {
    AP_COUNT.load(Ordering::SeqCst)
}

/// How many times the AP with APIC id `id` has woken from `hlt`: once per
/// interrupt it took.
pub fn wakeups(id: u32) -> u32 {
    AP_WAKEUPS
        .get(id as usize)
        .map_or(0, |w| w.load(Ordering::SeqCst))
}
