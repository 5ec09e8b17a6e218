//! The guest test programs of resources/guests, booted through the real `vmm` binary: a ring-0 stub
//! that drops to ring 3, where the test body runs and reports on serial and the exit port.

mod harness;

use harness::{guest, kvm_or_skip, vmm};

/// Exit status of a passing test program (verdict 0 on port 0xf4).
const PASS: i32 = 1;

#[test]
fn hello_greets_and_powers_off_with_1_and_4_cpus_256m_and_6g() {
    if !kvm_or_skip("hello_greets_and_powers_off_with_1_and_4_cpus_256m_and_6g") {
        return;
    }
    let hello = guest("hello");
    for cpus in ["1", "4"] {
        for memory in ["256M", "6G"] {
            vmm(&[
                "--kernel",
                hello.to_str().unwrap(),
                "--cpus",
                cpus,
                "--memory",
                memory,
                "--timeout",
                "60",
            ])
            .expect_status(0)
            .expect_line("Hello from the guest!")
            .expect_line("running at CPL3")
            .expect_line("self-IPI received")
            .expect_line("PASS hello: powering off");
        }
    }
}

#[test]
fn smp_starts_every_application_processor() {
    if !kvm_or_skip("smp_starts_every_application_processor") {
        return;
    }
    let smp = guest("smp");
    for cpus in 1..=4 {
        let run = vmm(&[
            "--kernel",
            smp.to_str().unwrap(),
            "--cpus",
            &cpus.to_string(),
            "--cmdline",
            &format!("cpus={cpus}"),
            "--timeout",
            "60",
        ]);
        run.expect_status(PASS)
            .expect_line(&format!("madt: {cpus} cpus"))
            .expect_line("PASS smp");
        for id in 0..cpus {
            run.expect_line(&format!("cpu {id} online"));
        }
    }
}

/// The guest checks its own view against what it was told to expect, so a VMM whose MADT lists the
/// wrong number of CPUs fails here.
#[test]
fn smp_notices_a_wrong_cpu_count() {
    if !kvm_or_skip("smp_notices_a_wrong_cpu_count") {
        return;
    }
    let run = vmm(&[
        "--kernel",
        guest("smp").to_str().unwrap(),
        "--cpus",
        "2",
        "--cmdline",
        "cpus=3",
        "--timeout",
        "60",
    ]);
    run.expect_status(3);
    assert!(run.stdout.contains("FAIL smp"), "{run:#?}");
}

#[test]
fn memmap_sees_all_ram_below_and_above_4g() {
    if !kvm_or_skip("memmap_sees_all_ram_below_and_above_4g") {
        return;
    }
    let memmap = guest("memmap");
    for (mib, checked) in [
        (256, "ram: 255 MiB checked"),
        (6144, "ram: 6143 MiB checked"),
    ] {
        let run = vmm(&[
            "--kernel",
            memmap.to_str().unwrap(),
            "--memory",
            &format!("{mib}M"),
            "--cmdline",
            &format!("ram_mib={mib}"),
            "--timeout",
            "60",
        ]);
        run.expect_status(PASS)
            .expect_line(checked)
            .expect_line("PASS memmap");
        if mib > 3072 {
            run.expect_line("mmap: base=0x100000000 len=0xc0000000 type=1");
        }
    }
}

/// PCI enumeration through 0xcf8/0xcfc (both sub-dword conventions) and through ECAM at the
/// address in the MCFG table, which must agree.
#[test]
fn pci_enumerates_through_both_configuration_mechanisms() {
    if !kvm_or_skip("pci_enumerates_through_both_configuration_mechanisms") {
        return;
    }
    vmm(&[
        "--kernel",
        guest("pci").to_str().unwrap(),
        "--cmdline",
        "devices=1",
        "--timeout",
        "60",
    ])
    .expect_status(PASS)
    .expect_line("mcfg: ecam 0xe0000000 buses 0-0")
    .expect_line("pci 00:00.0 8086:0d57 class 060000")
    .expect_line("PASS pci");
}

/// The edu DMA test device: found by PCI scan with its BAR placed and decoding, registers, DMA both
/// ways through its DMA handle with a checksum, MSI on completion, and INTx through the IOAPIC.
#[test]
fn edu_dma_with_msi_and_intx() {
    if !kvm_or_skip("edu_dma_with_msi_and_intx") {
        return;
    }
    let edu = guest("edu");
    vmm(&[
        "--kernel",
        edu.to_str().unwrap(),
        "--device",
        "edu",
        "--timeout",
        "60",
    ])
    .expect_status(PASS)
    .expect_line("edu at 00:01.0 bar0 0xc0000000 command 0x7 irq 16")
    .expect_line("dma: 3072 bytes both ways, checksum 0xacdb45c5")
    .expect_line("msi: vector 0x50 received")
    .expect_line("intx: vector 0x51 on pin 16")
    .expect_line("PASS edu");
    // Without the device the guest says so.
    let run = vmm(&["--kernel", edu.to_str().unwrap(), "--timeout", "60"]);
    run.expect_status(3)
        .expect_line("FAIL edu: no edu device (1234:11e8)");
}
