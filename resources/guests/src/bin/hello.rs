//! Smoke test: serial output, CPL3, the IDT/TSS/EOI path via a self-IPI, COM1's interrupt through
//! the I/O APIC; then an ACPI power-off, so a passing run ends the VM the way an OS would (exit
//! status 0), not through the exit port.

#![no_std]
#![no_main]

use guests::rt::{self, acpi, ioapic, lapic};
use guests::{fail, print, println};

guests::entry!(main);

const VECTOR: u8 = 0x40;
const SERIAL_VECTOR: u8 = 0x44;
const COM1: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;

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

    // COM1's interrupt: ISA IRQ 4 is I/O APIC pin 4 (edge); with the transmitter-empty interrupt
    // on (IER bit 1), writing a byte raises it.
    ioapic::route(COM1_IRQ, u32::from(SERIAL_VECTOR), id);
    let before = rt::interrupt_count(SERIAL_VECTOR);
    rt::outb(COM1 + 1, 0x02);
    rt::sti();
    print!("serial interrupt: ");
    let ok = rt::wait_for_interrupt(SERIAL_VECTOR, before, 100_000_000);
    rt::cli();
    rt::outb(COM1 + 1, 0);
    rt::inb(COM1 + 2);
    ioapic::route(COM1_IRQ, ioapic::MASKED, 0);
    if !ok {
        fail!(
            "no interrupt {:#x} from COM1 on I/O APIC pin 4",
            SERIAL_VECTOR
        );
    }
    println!("vector {:#x} on I/O APIC pin 4", SERIAL_VECTOR);
    println!("PASS hello: powering off");
    let why = acpi::poweroff();
    fail!("ACPI power-off failed: {}", why)
}
