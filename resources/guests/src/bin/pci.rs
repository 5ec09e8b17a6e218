//! PCI enumeration through both configuration mechanisms: port 0xcf8/0xcfc (including the two
//! ways guests make sub-dword accesses) and ECAM at the address the MCFG table gives. Each device
//! found is printed as `pci BB:DD.F VVVV:DDDD class CCCCCC`; with `devices=N` on the command line
//! the count must be N.

#![no_std]
#![no_main]

use guests::rt::{self, acpi};
use guests::{fail, println};

guests::entry!(main);

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

fn address(dev: u32, reg: u32) -> u32 {
    0x8000_0000 | (dev << 11) | reg
}

fn port_read32(dev: u32, reg: u32) -> u32 {
    rt::outl(CONFIG_ADDRESS, address(dev, reg & 0xfc));
    rt::inl(CONFIG_DATA)
}

fn ecam_read32(ecam: u64, dev: u64, reg: u64) -> u32 {
    // SAFETY: the ECAM window is identity-mapped device memory (below 4 GiB) that the MCFG table
    // describes; a read has no side effects in configuration space headers.
    unsafe { rt::mmio_read32(ecam + (dev << 15) + reg) }
}

fn main() -> ! {
    let Some(mcfg) = acpi::find_table(b"MCFG") else {
        fail!("no MCFG table")
    };
    let b = mcfg.bytes();
    if b.len() < 60 {
        fail!("MCFG has no allocation");
    }
    let ecam = u64::from_le_bytes([b[44], b[45], b[46], b[47], b[48], b[49], b[50], b[51]]);
    println!("mcfg: ecam {:#x} buses {}-{}", ecam, b[54], b[55]);

    let mut found = 0;
    for dev in 0..32u32 {
        let id = port_read32(dev, 0);
        let by_ecam = ecam_read32(ecam, u64::from(dev), 0);
        if id != by_ecam {
            fail!(
                "00:{:02x}.0: id {:#x} through 0xcf8 but {:#x} through ECAM",
                dev,
                id,
                by_ecam
            );
        }
        if id == 0xffff_ffff {
            continue;
        }
        let class = port_read32(dev, 8) >> 8;
        println!(
            "pci 00:{:02x}.0 {:04x}:{:04x} class {:06x}",
            dev,
            id & 0xffff,
            id >> 16,
            class
        );
        found += 1;

        // The device id as a word: at 0xcfe, and with the low offset bits in CONFIG_ADDRESS.
        rt::outl(CONFIG_ADDRESS, address(dev, 0));
        let at_cfe = rt::inw(CONFIG_DATA + 2);
        rt::outl(CONFIG_ADDRESS, address(dev, 2));
        let low_bits = rt::inw(CONFIG_DATA);
        if u32::from(at_cfe) != id >> 16 || u32::from(low_bits) != id >> 16 {
            fail!(
                "device id as a word: {:#x} at 0xcfe, {:#x} with offset bits in 0xcf8",
                at_cfe,
                low_bits
            );
        }
        // A byte of the class code through each way.
        rt::outl(CONFIG_ADDRESS, address(dev, 8));
        if u32::from(rt::inb(CONFIG_DATA + 3)) != class >> 16 {
            fail!("class byte at 0xcff");
        }
    }
    if let Some(want) = rt::cmdline_value("devices")
        && want.parse::<u32>().ok() != Some(found)
    {
        fail!("found {} devices, expected {}", found, want);
    }
    println!("pci: {} devices", found);
    rt::pass()
}
