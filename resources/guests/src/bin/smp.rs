//! Starts every AP listed in the MADT and checks that exactly those come
//! online.

#![no_std]
#![no_main]

use guests::rt::acpi::Madt;
use guests::rt::sys::MAX_APIC_IDS;
use guests::rt::time::Deadline;
use guests::rt::{self, lapic, smp};
use guests::{fail, println};

guests::entry!(main);

/// How long all APs together may take to come online.
const ONLINE_TIMEOUT_US: u64 = 3_000_000;

fn main() -> ! {
    let Some(madt) = Madt::find() else {
        fail!("no valid MADT (APIC table) found")
    };

    let mut expected = [0u64; MAX_APIC_IDS / 64];
    let mut count = 0u32;
    for p in madt.processors().filter(|p| p.enabled()) {
        let id = p.apic_id;
        if id as usize >= MAX_APIC_IDS {
            fail!("MADT lists APIC id {} (not addressable in xAPIC mode)", id);
        }
        if expected[id as usize / 64] & (1 << (id % 64)) != 0 {
            fail!("MADT lists APIC id {} twice", id);
        }
        expected[id as usize / 64] |= 1 << (id % 64);
        count += 1;
    }
    println!("madt: {} cpus", count);

    if let Some(v) = rt::cmdline_value("cpus") {
        match v.parse::<u32>() {
            Ok(n) if n == count => {}
            Ok(n) => fail!(
                "cmdline says cpus={} but the MADT lists {} enabled cpus",
                n,
                count
            ),
            Err(_) => fail!("bad cpus= value {:?} on the command line", v),
        }
    }

    lapic::enable();
    let bsp = lapic::id();
    if bsp as usize >= MAX_APIC_IDS || expected[bsp as usize / 64] & (1 << (bsp % 64)) == 0 {
        fail!(
            "boot CPU's APIC id {} is not an enabled MADT processor",
            bsp
        );
    }
    smp::mark_online(bsp);

    let vector = smp::install_trampoline();
    for id in (0..MAX_APIC_IDS as u32)
        .filter(|&id| id != bsp && expected[id as usize / 64] & (1 << (id % 64)) != 0)
    {
        smp::start_ap(id, vector);
    }

    let deadline = Deadline::after_us(ONLINE_TIMEOUT_US);
    loop {
        let online = smp::online_mask();
        if online.iter().zip(expected.iter()).all(|(o, e)| o & e == *e) {
            break;
        }
        if deadline.expired() {
            for id in 0..MAX_APIC_IDS as u32 {
                let bit = 1 << (id % 64);
                if expected[id as usize / 64] & bit != 0 && online[id as usize / 64] & bit == 0 {
                    println!("cpu {} did not come online", id);
                }
            }
            fail!(
                "timed out waiting for APs ({} of {} online)",
                smp::ap_count(),
                count - 1
            );
        }
        core::hint::spin_loop();
    }

    // Give stragglers (ids not in the MADT) a moment to show up, then compare exactly.
    rt::time::delay_us(10_000);
    let online = smp::online_mask();
    if online != expected {
        for id in 0..MAX_APIC_IDS as u32 {
            let bit = 1 << (id % 64);
            if online[id as usize / 64] & bit != 0 && expected[id as usize / 64] & bit == 0 {
                println!("cpu {} online but not in the MADT", id);
            }
        }
        fail!("online set differs from the MADT's set");
    }
    if smp::ap_count() != count - 1 {
        fail!("AP counter is {}, expected {}", smp::ap_count(), count - 1);
    }
    for id in (0..MAX_APIC_IDS as u32).filter(|&id| smp::is_online(id)) {
        println!("cpu {} online", id);
    }
    rt::pass()
}
