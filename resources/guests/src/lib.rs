//! Runtime for small bare-metal test guests.
//!
//! Every guest program in `src/bin` is a multiboot v1 kernel. A tiny ring-0
//! stub (assembly in [`boot`]) switches to 64-bit long mode with identity
//! paging, loads a GDT/IDT/TSS and drops to ring 3 with RFLAGS.IOPL=3. The
//! test body then runs as ordinary `no_std` Rust at CPL3, using the [`rt`]
//! module: serial output, port and MMIO access, interrupt counters, LAPIC,
//! multiboot information, ACPI tables, AP start-up and more paging.
//!
//! A program looks like this:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use guests::{println, rt};
//! guests::entry!(main);
//! fn main() -> ! {
//!     println!("hi");
//!     rt::pass()
//! }
//! ```

#![no_std]

mod boot;
pub mod rt;
