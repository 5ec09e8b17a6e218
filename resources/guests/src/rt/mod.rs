//! Ring-3 runtime shared by all guest programs.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::Ordering;

pub mod acpi;
pub mod bench;
pub mod edu;
pub mod io;
pub mod ioapic;
pub mod lapic;
pub mod mem;
pub mod multiboot;
pub mod paging;
pub mod pci;
pub mod serial;
pub mod smp;
pub mod sys;
pub mod time;
pub mod vtd;

pub use io::{cli, inb, inl, inw, outb, outl, outw, sti};
pub use io::{mmio_read8, mmio_read16, mmio_read32, mmio_read64};
pub use io::{mmio_write8, mmio_write16, mmio_write32, mmio_write64};
pub use multiboot::{cmdline, cmdline_value};
pub use paging::map_identity_above_4g;

/// The FNV-1a offset basis: the hash of no bytes.
pub const FNV_INIT: u32 = 0x811c_9dc5;

/// FNV-1a of `data`, continuing from `hash` (start with [`FNV_INIT`]); order-sensitive, so a
/// shifted or partial copy does not match. The tests compute the same on the host.
pub fn fnv(hash: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// The exit port (QEMU isa-debug-exit convention): writing `v` ends the VM
/// with process status `(v << 1) | 1`.
pub const EXIT_PORT: u16 = 0xf4;

/// A static that is shared without synchronisation. Only used for data
/// written once during single-threaded start-up or owned by the ring-0 stub.
#[repr(transparent)]
pub struct Racy<T>(UnsafeCell<T>);

// SAFETY: users of `Racy` guarantee there are no data races (single ring-3
// thread; the APs never touch these statics from Rust).
unsafe impl<T> Sync for Racy<T> {}

impl<T> Racy<T> {
    pub const fn new(v: T) -> Self {
        Racy(UnsafeCell::new(v))
    }
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Declares the program's entry point: `guests::entry!(main);` with
/// `fn main() -> !`. The runtime calls it at CPL3 after its own set-up.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        pub static GUEST_NAME: &str = env!("CARGO_BIN_NAME");

        #[unsafe(no_mangle)]
        pub fn guest_main() -> ! {
            let f: fn() -> ! = $main;
            f()
        }
    };
}

/// Prints to the serial port (COM1).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::rt::serial::print_fmt(format_args!($($arg)*)) };
}

/// Prints a line to the serial port (COM1).
#[macro_export]
macro_rules! println {
    () => { $crate::rt::serial::print_str("\n") };
    ($($arg:tt)*) => {{
        $crate::rt::serial::print_fmt(format_args!($($arg)*));
        $crate::rt::serial::print_str("\n");
    }};
}

/// Prints `FAIL <name>: <message>` and exits with 1.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)*) => { $crate::rt::fail_fmt(format_args!($($arg)*)) };
}

unsafe extern "Rust" {
    static GUEST_NAME: &'static str;
    fn guest_main() -> !;
}

/// The program's name (its binary name).
pub fn name() -> &'static str {
    // SAFETY: defined by `entry!` in the binary, immutable.
    unsafe { GUEST_NAME }
}

/// Ends the VM: writes `v` to the exit port. Spins if the write returns.
pub fn exit(v: u32) -> ! {
    outl(EXIT_PORT, v);
    loop {
        core::hint::spin_loop();
    }
}

/// Prints `PASS <name>` and exits with 0.
pub fn pass() -> ! {
    println!("PASS {}", name());
    exit(0)
}

#[doc(hidden)]
pub fn fail_fmt(args: fmt::Arguments<'_>) -> ! {
    print!("FAIL {}: ", name());
    serial::print_fmt(args);
    println!();
    exit(1)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cli();
    match info.location() {
        Some(l) => println!(
            "FAIL: panic: {} at {}:{}:{}",
            info.message(),
            l.file(),
            l.line(),
            l.column()
        ),
        None => println!("FAIL: panic: {} at <unknown>", info.message()),
    }
    exit(1)
}

/// Entered from the ring-0 stub with `iretq`: CPL3, IOPL=3, IF=0.
pub(crate) extern "C" fn guest_rust_start() -> ! {
    sys::fill_idt();
    multiboot::init();
    io::disable_legacy_pic();
    let magic = sys::MB_MAGIC.load(Ordering::Relaxed);
    if magic != multiboot::BOOT_MAGIC {
        fail!("bad multiboot magic {:#x} in eax", magic);
    }
    // SAFETY: defined by `entry!` in the binary.
    unsafe { guest_main() }
}

/// Number of times vector `vector` (32..=254) has been delivered.
pub fn interrupt_count(vector: u8) -> u32 {
    sys::IRQ_COUNTS[vector as usize].load(Ordering::SeqCst)
}

/// Spins (with `pause`) until the count of `vector` differs from
/// `previous`; gives up after `max_spins` iterations. Interrupts must be
/// enabled (`sti`) for anything to arrive.
pub fn wait_for_interrupt(vector: u8, previous: u32, max_spins: u64) -> bool {
    for _ in 0..max_spins {
        if interrupt_count(vector) != previous {
            return true;
        }
        core::hint::spin_loop();
    }
    interrupt_count(vector) != previous
}
