//! Polled output on the 16550 UART at 0x3f8 (COM1).

use core::fmt;

use super::io::{inb, outb};

pub const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const LSR_THRE: u8 = 1 << 5;

/// Writes one byte, waiting (bounded) for the transmitter holding register
/// to be empty.
pub fn putc(b: u8) {
    for _ in 0..1_000_000 {
        if inb(LSR) & LSR_THRE != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

pub fn print_str(s: &str) {
    for b in s.bytes() {
        putc(b);
    }
}

struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        print_str(s);
        Ok(())
    }
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments<'_>) {
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}
