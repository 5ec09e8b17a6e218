//! Booting the CI kernel (Debian's 6.12 cloud kernel, resources/linux/ci-kernel.sh) through the real
//! `vmm` binary. Where KVM is hardware-assisted the kernel boots in full to the initramfs's init,
//! which reports its checks through the exit port. On a software KVM a Linux guest cannot finish
//! booting (../shared/reference/platform.md), so the partial-boot tests check what the kernel prints
//! before that limit, and stop the guest as soon as they have seen it.

#![allow(clippy::indexing_slicing)]

mod harness;

use std::time::Duration;

use harness::{
    Run, ci_initramfs, ci_kernel, hardware_kvm, kvm_or_skip, note, skip_here, vmm, vmm_until,
};

/// Options that keep the kernel off instructions a software KVM's emulator lacks (platform.md).
const AVOID_EMULATOR_GAPS: &str = "noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,fsgsbase,smap,pcid,invpcid,bmi1,bmi2,rdpid,pku,movbe";

/// Lines no boot may print.
const FORBIDDEN: [&str; 6] = [
    "ACPI Error",
    "ACPI BIOS Error",
    "ACPI Warning",
    "[Firmware Bug]",
    "Kernel panic",
    "BUG:",
];

fn has_line(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| l.contains(want))
}

fn assert_clean(test: &str, run: &Run) {
    for bad in FORBIDDEN {
        assert!(
            !run.stdout.contains(bad),
            "{test}: the kernel printed {bad:?}:\n{}",
            run.stdout
        );
    }
}

/// The partial boot: PVH entry of the uncompressed kernel, up to the MADT (and, with --iommu, the
/// DMAR unit). Asserts the version line, the e820 map exactly as the VMM built it, every ACPI table
/// the VMM provides, the MADT's contents as Linux parsed them, the kernel's lines for our VT-d
/// unit (its CAP and ECAP as the unit reports them, interrupt remapping enabled in x2APIC mode),
/// and no ACPI or firmware-bug lines.
#[test]
fn linux_pvh_partial_boot_sees_our_e820_and_acpi_tables() {
    const TEST: &str = "linux_pvh_partial_boot_sees_our_e820_and_acpi_tables";
    if !kvm_or_skip(TEST) {
        return;
    }
    let Some(kernel) = ci_kernel(TEST) else {
        return;
    };
    let vmlinux = kernel.join("vmlinux");
    let initramfs = ci_initramfs(&kernel);
    let e820_low = [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x00000000e0000000-0x00000000e00fffff] reserved",
    ];
    // The 256 MiB guest has the VT-d unit (--iommu, intel_iommu=on): its DMAR table and register
    // page as Linux reads them. The 6 GiB guest has none, and no DMAR table.
    let cases: [(&str, &str, bool, Vec<&str>); 2] = [
        (
            "256M",
            "1",
            true,
            vec![
                "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
                "BIOS-e820: [mem 0x00000000fed90000-0x00000000fed90fff] reserved",
            ],
        ),
        (
            "6G",
            "2",
            false,
            vec![
                "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
                "BIOS-e820: [mem 0x0000000100000000-0x00000001bfffffff] usable",
            ],
        ),
    ];
    let unit = iommu::Config::default();
    for (memory, cpus, with_iommu, e820_ram) in cases {
        let mut cmdline = format!("console=ttyS0 earlyprintk=serial {AVOID_EMULATOR_GAPS}");
        let mut wanted: Vec<String> = vec![
            "Linux version 6.12".into(),
            "ACPI: RSDP 0x00000000000E0000".into(),
            "ACPI: XSDT 0x00000000000E".into(),
            "ACPI: FACP 0x00000000000E".into(),
            "ACPI: DSDT 0x00000000000E".into(),
            "ACPI: APIC 0x00000000000E".into(),
            "ACPI: LAPIC_NMI (acpi_id[0xff] dfl dfl lint[0x1])".into(),
            "IOAPIC[0]: apic_id 0, version 32, address 0xfec00000, GSI 0-23".into(),
            "ACPI: INT_SRC_OVR (bus 0 bus_irq 0 global_irq 2 dfl dfl)".into(),
            format!("CPU topo: Allowing {cpus} present CPUs plus 0 hotplug CPUs"),
        ];
        if with_iommu {
            cmdline.push_str(" intel_iommu=on");
            wanted.extend([
                "ACPI: DMAR 0x00000000000E".into(),
                "DMAR: IOMMU enabled".into(),
                // Linux moves to our I/O APIC (split irqchip); the DMAR lines below come after.
                "APIC: Switch to symmetric I/O mode setup".into(),
                "DMAR: Host address width 48".into(),
                "DMAR: DRHD base: 0x000000fed90000 flags: 0x1".into(),
                format!(
                    "DMAR: dmar0: reg_base_addr fed90000 ver 1:0 cap {:x} ecap {:x}",
                    unit.cap(),
                    unit.ecap()
                ),
                // Interrupt remapping: the I/O APIC scope found, the table set up through the
                // invalidation queue (SIRTP, a global IEC invalidation and its wait), IRE, and
                // x2APIC mode because the unit offers EIM.
                "DMAR-IR: IOAPIC id 0 under DRHD base  0xfed90000 IOMMU 0".into(),
                "DMAR-IR: Enabled IRQ remapping in x2apic mode".into(),
                "x2apic enabled".into(),
            ]);
        }
        wanted.extend(e820_low.iter().chain(&e820_ram).map(|l| l.to_string()));
        let mut args = vec![
            "--kernel",
            vmlinux.to_str().unwrap(),
            "--initramfs",
            initramfs.to_str().unwrap(),
            "--cmdline",
            &cmdline,
            "--memory",
            memory,
            "--cpus",
            cpus,
        ];
        if with_iommu {
            args.push("--iommu");
        }
        let run = vmm_until(&args, Duration::from_secs(400), |lines| {
            wanted.iter().all(|w| has_line(lines, w))
        });
        let last = run.stdout.lines().last().unwrap_or("(no output)");
        note(
            TEST,
            &format!("{memory}/{cpus} CPUs: stopped after: {last}"),
        );
        for w in &wanted {
            assert!(
                run.stdout.lines().any(|l| l.contains(w.as_str())),
                "{memory}: missing {w:?}; run: {run:#?}"
            );
        }
        if !with_iommu {
            assert!(!run.stdout.contains("ACPI: DMAR"), "{memory}: {run:#?}");
        }
        // Exactly our map: no other e820 line.
        let e820: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains("BIOS-e820:"))
            .collect();
        assert_eq!(
            e820.len(),
            e820_low.len() + e820_ram.len(),
            "{memory}: e820 lines: {e820:#?}"
        );
        assert_clean(TEST, &run);
    }
}

/// The bzImage: its decompressor starts and prints on the early console. (With `nokaslr` it always
/// says so; this kernel's decompressor is otherwise silent.) Here it then dies in the software KVM's
/// emulator; on hardware KVM the full-boot test covers the rest.
#[test]
fn linux_bzimage_decompressor_starts() {
    const TEST: &str = "linux_bzimage_decompressor_starts";
    if !kvm_or_skip(TEST) {
        return;
    }
    let Some(kernel) = ci_kernel(TEST) else {
        return;
    };
    let marker = "KASLR disabled: 'nokaslr' on cmdline.";
    let bzimage = kernel.join("bzImage");
    let initramfs = ci_initramfs(&kernel);
    let args = [
        "--kernel",
        bzimage.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 earlyprintk=ttyS0 nokaslr",
    ];
    let run = vmm_until(&args, Duration::from_secs(120), |lines| {
        has_line(lines, marker)
    });
    assert!(
        has_line(
            &run.stdout.lines().map(str::to_owned).collect::<Vec<_>>(),
            marker
        ),
        "{run:#?}"
    );
    assert_clean(TEST, &run);
}

/// The CI kernel's cache and initramfs for a full boot, or None (with the skip reported) where
/// there is no KVM, KVM is not hardware-assisted, or the kernel cannot be fetched.
fn full_boot_kernel(test: &str) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    if !kvm_or_skip(test) {
        return None;
    }
    if !hardware_kvm() {
        skip_here(
            test,
            "KVM here is not hardware-assisted (no vmx/svm): Linux cannot finish booting",
        );
        return None;
    }
    let kernel = ci_kernel(test)?;
    let initramfs = ci_initramfs(&kernel);
    Some((kernel, initramfs))
}

/// The full boot, where KVM is hardware-assisted: bzImage and PVH vmlinux, 1 and 2 vCPUs, up to the
/// initramfs's init, whose checks pass and whose verdict is the VMM's exit status.
#[test]
fn linux_full_boot_reaches_init_and_returns_its_verdict() {
    const TEST: &str = "linux_full_boot_reaches_init_and_returns_its_verdict";
    let Some((kernel, initramfs)) = full_boot_kernel(TEST) else {
        return;
    };
    for image in ["bzImage", "vmlinux"] {
        for cpus in ["1", "2"] {
            let cmdline = format!("console=ttyS0 vmm.test vmm.cpus={cpus}");
            let run = vmm(&[
                "--kernel",
                kernel.join(image).to_str().unwrap(),
                "--initramfs",
                initramfs.to_str().unwrap(),
                "--cmdline",
                &cmdline,
                "--cpus",
                cpus,
                "--timeout",
                "300",
            ]);
            run.expect_status(1)
                .expect_line(&format!("VMM-INIT: check cpus: {cpus} online"))
                .expect_line("VMM-INIT: module virtio_blk loaded")
                .expect_line("VMM-INIT: verdict 0");
            assert_clean(TEST, &run);
        }
    }
}

/// Where KVM is hardware-assisted: the CI kernel boots with `--iommu` and `intel_iommu=on` in lazy,
/// strict (`iommu.strict=1`) and pass-through (`iommu=pt`) modes, each with caching mode off and
/// on; it takes queued invalidation, puts the devices in IOMMU groups with the expected default
/// domain, and reads a virtio disk through the unit with the host's checksum.
#[test]
fn linux_full_boot_with_the_iommu_reads_the_disk_in_every_mode() {
    const TEST: &str = "linux_full_boot_with_the_iommu_reads_the_disk_in_every_mode";
    let Some((kernel, initramfs)) = full_boot_kernel(TEST) else {
        return;
    };
    let image: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let disk = harness::scratch_file("linux-iommu.img", &image);
    let sha = std::process::Command::new("sha256sum")
        .arg(&disk)
        .output()
        .expect("run sha256sum");
    let sha = String::from_utf8_lossy(&sha.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let disk_arg = format!("path={},readonly=on", disk.display());
    for (mode, words, domain) in [
        ("lazy", "", "Translated"),
        ("strict", " iommu.strict=1", "Translated"),
        ("pass-through", " iommu=pt", "Passthrough"),
    ] {
        for cm in ["off", "on"] {
            let cmdline =
                format!("console=ttyS0 intel_iommu=on{words} vmm.test vmm.cpus=2 vmm.disk");
            let options = format!("caching-mode={cm}");
            let run = vmm(&[
                "--kernel",
                kernel.join("bzImage").to_str().unwrap(),
                "--initramfs",
                initramfs.to_str().unwrap(),
                "--cmdline",
                &cmdline,
                "--cpus",
                "2",
                "--iommu",
                &options,
                "--disk",
                &disk_arg,
                "--timeout",
                "300",
            ]);
            let what = format!("{mode}, caching mode {cm}");
            run.expect_status(1)
                .expect_line(&format!("VMM-INIT: disk vda sha256 {sha}"))
                .expect_line("VMM-INIT: verdict 0");
            for line in [
                "DMAR: dmar0: Using Queued invalidation",
                "Adding to iommu group",
                &format!("iommu: Default domain type: {domain}"),
            ] {
                assert!(run.stdout.contains(line), "{what}: no {line:?}: {run:#?}");
            }
            // The policy line comes from the IOMMU core before the driver looks at CM; with CM
            // the driver then says it forces strict invalidation.
            let mut expected = Vec::new();
            match (mode, cm) {
                ("lazy", "off") => expected.push("DMA domain TLB invalidation policy: lazy mode"),
                ("strict", _) => expected.push("DMA domain TLB invalidation policy: strict mode"),
                _ => {}
            }
            if cm == "on" && mode != "pass-through" {
                expected.push("IOMMU batching disallowed due to virtualization");
            }
            for line in expected {
                assert!(run.stdout.contains(line), "{what}: no {line:?}: {run:#?}");
            }
            assert!(
                !run.stdout.contains("VMM-INIT: iommu groups 0"),
                "{what}: no IOMMU groups: {run:#?}"
            );
            assert_clean(TEST, &run);
        }
    }
    std::fs::remove_file(&disk).unwrap();
}

/// The fetch script's cache: used as is when intact (nothing is downloaded), refused when a file
/// fails its checksum, and then fetched again.
#[test]
fn ci_kernel_cache_is_verified_and_refetched() {
    const TEST: &str = "ci_kernel_cache_is_verified_and_refetched";
    let Some(shared) = ci_kernel(TEST) else {
        return;
    };
    let script = harness::root().join("resources/linux/ci-kernel.sh");
    let fetch = |cache: &std::path::Path, offline: bool| {
        std::process::Command::new("bash")
            .arg(&script)
            .env("VMM_CACHE_DIR", cache)
            .env("VMM_CI_KERNEL_OFFLINE", if offline { "1" } else { "0" })
            .output()
            .expect("run ci-kernel.sh")
    };
    // The populated cache serves offline.
    let cache = shared.parent().unwrap();
    let out = fetch(cache, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        shared.to_str().unwrap()
    );

    // A copy with a truncated vmlinux is refused offline and repaired online.
    let copy = std::env::temp_dir().join(format!("vmm-cache-test-{}", std::process::id()));
    std::fs::create_dir_all(&copy).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&shared)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let vmlinux = copy.join("ci-kernel/vmlinux");
    let good = std::fs::read(&vmlinux).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vmlinux)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let out = fetch(&copy, true);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fails its checksums"),
        "{out:?}"
    );
    let out = fetch(&copy, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&vmlinux).unwrap() == good, "vmlinux restored");
    std::fs::remove_dir_all(&copy).unwrap();
}
