//! Smoke test: serial output, CPL3, and the IDT/TSS/EOI path via a self-IPI; then an ACPI power-off,
//! so a passing run ends the VM the way an OS would (exit status 0), not through the exit port.

#![no_std]
#![no_main]

use guests::rt::{self, acpi, lapic};
use guests::{fail, println};

guests::entry!(main);

const VECTOR: u8 = 0x40;

fn main() -> ! {
    println!("Hello from the guest!");

    let cs = rt::io::read_cs();
    if cs & 3 != 3 {
        fail!("running at CPL{} (cs={:#x}), expected CPL3", cs & 3, cs);
    }
    println!("running at CPL3");

    lapic::enable();
    let id = lapic::id();
    let before = rt::interrupt_count(VECTOR);
    rt::sti();
    lapic::send_fixed_ipi(id, VECTOR);
    let ok = rt::wait_for_interrupt(VECTOR, before, 100_000_000);
    rt::cli();
    if !ok {
        fail!(
            "self-IPI (vector {:#x}) to APIC id {} not received",
            VECTOR,
            id
        );
    }
    let after = rt::interrupt_count(VECTOR);
    if after != before + 1 {
        fail!(
            "vector {:#x} counted {} times, expected 1",
            VECTOR,
            after - before
        );
    }
    println!("self-IPI received");
    println!("PASS hello: powering off");
    let why = acpi::poweroff();
    fail!("ACPI power-off failed: {}", why)
}
