//! The edu DMA test device as a driver uses it: found by a PCI scan through 0xcf8, set up by
//! "firmware" (BAR placed, memory decode on, interrupt line set), identification, liveness and
//! factorial registers, DMA guest memory -> device buffer -> guest memory with a checksum, the
//! MSI on DMA completion, and the INTx line through the IOAPIC.

#![no_std]
#![no_main]

use guests::rt::edu::Edu;
use guests::rt::pci::{config_read32, config_write32};
use guests::rt::{self, ioapic, lapic};
use guests::{fail, println};

guests::entry!(main);

const MSI_VECTOR: u8 = 0x50;
const INTX_VECTOR: u8 = 0x51;
/// Remote IRR (bit 14) of the pin's redirection entry: set while a level-triggered interrupt it
/// delivered waits for its EOI.
fn remote_irr(pin: u32) -> bool {
    ioapic::entry(pin) & ioapic::REMOTE_IRR != 0
}

/// Runs a transfer and waits for it.
fn dma(edu: &Edu, src: u64, dst: u64, count: u64, cmd: u64) {
    if !edu.dma(src, dst, count, cmd) {
        fail!("DMA did not complete");
    }
}

/// Bytes per transfer.
const LEN: usize = 3072;

static mut SRC: [u8; 4096] = [0; 4096];
static mut DST: [u8; 4096] = [0; 4096];

fn checksum(data: &[u8]) -> u32 {
    rt::fnv(rt::FNV_INIT, data)
}

fn main() -> ! {
    let Some(dev) = (0..32).find(|&d| config_read32(d, 0) == 0x11e8_1234) else {
        fail!("no edu device (1234:11e8)")
    };
    let bar = u64::from(config_read32(dev, 0x10) & !0xf);
    let command = config_read32(dev, 0x04) & 0xffff;
    let line = config_read32(dev, 0x3c) & 0xff;
    println!(
        "edu at 00:{:02x}.0 bar0 {:#x} command {:#x} irq {}",
        dev, bar, command, line
    );
    if bar == 0 || command & 0x2 == 0 {
        fail!("BAR0 not placed or memory decode off");
    }
    // As a driver does: bus mastering on before any DMA (firmware need not have done it).
    config_write32(dev, 0x04, command | 0x4);
    let edu = Edu { dev, bar };

    if edu.r32(0x00) != 0x0100_00ed {
        fail!("identification {:#x}", edu.r32(0));
    }
    edu.w32(0x04, 0x1234_5678);
    if edu.r32(0x04) != !0x1234_5678 {
        fail!("liveness");
    }
    edu.w32(0x08, 12);
    // The device may compute in the background: status bit 0 says so.
    for _ in 0..10_000_000 {
        if edu.r32(0x20) & 1 == 0 {
            break;
        }
    }
    if edu.r32(0x08) != 479_001_600 {
        fail!("factorial of 12: {}", edu.r32(0x08));
    }

    // DMA both ways through guest memory. 3 KiB, not the whole 4 KiB buffer: QEMU 7.2's edu
    // refuses transfers that end exactly at the buffer's end, and this program runs there too.
    // SAFETY: the only references to SRC and DST; the device writes DST while nothing reads it.
    let (src, dst) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(SRC),
            &mut *core::ptr::addr_of_mut!(DST),
        )
    };
    for (i, b) in src.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    dma(&edu, src.as_ptr() as u64, 0x40000, LEN as u64, 0);
    dma(&edu, 0x40000, dst.as_mut_ptr() as u64, LEN as u64, 2);
    // SAFETY: the device wrote DST behind the compiler's back; read it afresh.
    let dst_view = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(DST)) };
    let (got, want) = (checksum(&dst_view[..LEN]), checksum(&src[..LEN]));
    if got != want || dst_view[LEN] != 0 {
        fail!("DMA round trip: checksum {:#x}, want {:#x}", got, want);
    }
    println!("dma: {} bytes both ways, checksum {:#x}", LEN, want);

    // MSI on DMA completion: the capability at the pointer, 64-bit layout.
    lapic::enable();
    let cap = config_read32(dev, 0x34) & 0xff;
    if config_read32(dev, cap) & 0xff != 0x05 {
        fail!("no MSI capability at {:#x}", cap);
    }
    config_write32(dev, cap + 4, 0xfee0_0000 | (lapic::id() << 12));
    config_write32(dev, cap + 8, 0);
    config_write32(dev, cap + 12, u32::from(MSI_VECTOR));
    config_write32(dev, cap, config_read32(dev, cap) | (1 << 16));
    let before = rt::interrupt_count(MSI_VECTOR);
    rt::sti();
    dma(&edu, src.as_ptr() as u64, 0x40000, 16, 4);
    if !rt::wait_for_interrupt(MSI_VECTOR, before, 100_000_000) {
        fail!("no MSI after DMA");
    }
    rt::cli();
    if edu.r32(0x24) & 0x100 == 0 {
        fail!("interrupt status lacks the DMA bit");
    }
    edu.w32(0x64, 0x100);
    println!("msi: vector {:#x} received", MSI_VECTOR);

    // INTx through the IOAPIC: MSI off, the pin level-triggered to INTX_VECTOR. Raised and
    // acknowledged with interrupts off, the pending interrupt arrives once at sti, and not again.
    config_write32(dev, cap, config_read32(dev, cap) & !(1 << 16));
    ioapic::route(line, u32::from(INTX_VECTOR) | ioapic::LEVEL, lapic::id());
    let before = rt::interrupt_count(INTX_VECTOR);
    edu.w32(0x60, 0x1);
    edu.w32(0x64, 0x1);
    rt::sti();
    if !rt::wait_for_interrupt(INTX_VECTOR, before, 100_000_000) {
        fail!("no INTx interrupt on IOAPIC pin {}", line);
    }
    for _ in 0..1_000_000 {
        core::hint::spin_loop();
    }
    rt::cli();
    let count = rt::interrupt_count(INTX_VECTOR) - before;
    if count != 1 {
        fail!(
            "INTx delivered {} times, want once (deasserted on acknowledge)",
            count
        );
    }
    println!("intx: vector {:#x} on pin {}", INTX_VECTOR, line);

    // The handler's EOI reached the IOAPIC (under a split irqchip, through KVM's EOI exit): remote
    // IRR is clear again. A second round: delivered with interrupts off, the entry waits for its
    // EOI (remote IRR set); taken at sti, the EOI clears it, and the pin can interrupt again.
    if remote_irr(line) {
        fail!("remote IRR still set after the handler's EOI");
    }
    let before = rt::interrupt_count(INTX_VECTOR);
    edu.w32(0x60, 0x1);
    let mut spins = 0u64;
    while !remote_irr(line) {
        spins += 1;
        if spins > 1_000_000 {
            fail!("INTx raised again, but the IOAPIC did not deliver it (remote IRR clear)");
        }
    }
    edu.w32(0x64, 0x1);
    rt::sti();
    if !rt::wait_for_interrupt(INTX_VECTOR, before, 100_000_000) {
        fail!("second INTx not delivered");
    }
    rt::cli();
    if rt::interrupt_count(INTX_VECTOR) - before != 1 || remote_irr(line) {
        fail!(
            "second INTx: delivered {} times, remote IRR {}",
            rt::interrupt_count(INTX_VECTOR) - before,
            remote_irr(line)
        );
    }
    println!("intx: remote IRR set until the EOI, then clear; delivered again");
    rt::pass()
}
