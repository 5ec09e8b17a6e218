//! The guest test programs of resources/guests, booted through the real `vmm` binary: a ring-0 stub
//! that drops to ring 3, where the test body runs and reports on serial and the exit port.

mod harness;

use harness::{guest, kvm_or_skip, scratch_file, vmm};

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
            .expect_line("serial interrupt: vector 0x44 on I/O APIC pin 4")
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
    .expect_line("intx: remote IRR set until the EOI, then clear; delivered again")
    .expect_line("PASS edu");
    // Without the device the guest says so.
    let run = vmm(&["--kernel", edu.to_str().unwrap(), "--timeout", "60"]);
    run.expect_status(3)
        .expect_line("FAIL edu: no edu device (1234:11e8)");
}

/// Interrupt remapping, set up as Linux sets it up: the edu device's MSI through a remapping
/// table entry with a subhandle, the entry's IEC invalidation changing the delivered vector, a
/// non-present entry and a failed source-id check recorded (reason, index, requester) with nothing
/// delivered, compatibility-format MSIs blocked (let through by CFI only in xAPIC mode), edu's INTx
/// through remappable I/O APIC entries (edge, ended by the EOI register; level, ended by the local
/// APIC's EOI through KVM's EOI exit), and each AP reached through its own entry: 32-bit x2APIC
/// destinations (EIM; the id plus 256 reaches no CPU) with 4 vCPUs, xAPIC ones with 2. The local
/// APICs stay in xAPIC mode (x2APIC mode needs ring-0 MSR writes the test body cannot make; Linux
/// shows it in the partial boot). With `intremap=off` the DMAR table does not claim interrupt
/// remapping.
#[test]
fn interrupt_remapping_of_msis_and_ioapic_pins_with_x2apic_and_xapic_destinations() {
    if !kvm_or_skip(
        "interrupt_remapping_of_msis_and_ioapic_pins_with_x2apic_and_xapic_destinations",
    ) {
        return;
    }
    let program = guest("intremap");
    let kernel = program.to_str().unwrap();
    for (iommu, eim, cpus, faults) in [("", "on", "4", 4), ("eim=off", "off", "2", 3)] {
        let cmdline = format!("eim={eim} cpus={cpus}");
        let mut args = vec!["--kernel", kernel, "--device", "edu", "--cpus", cpus];
        args.extend(["--iommu", iommu, "--cmdline", &cmdline, "--timeout", "60"]);
        let run = vmm(&args);
        let mode = if eim == "on" { "x2APIC" } else { "xAPIC" };
        let aps = cpus.parse::<u64>().unwrap() - 1;
        run.expect_status(PASS)
            .expect_line("dmar: INTR_REMAP, I/O APIC 0 at source-id f0:1f.0")
            .expect_line(&format!("ir: enabled, 256 entries, {mode} destinations"))
            .expect_line("msi: remapped through entry 0x11 to vector 0x50")
            .expect_line("iec: before the invalidation vector 0x50 (cached), after it 0x52")
            .expect_line("absent entry: blocked, fault reason 0x22 index 0x20 source 00:01.0")
            .expect_line(
                "other requester's entry: blocked, fault reason 0x26 index 0x21 source 00:01.0",
            )
            .expect_line("sid: entry 0x21 verified against 00:01.0")
            .expect_line("compatibility msi: blocked, fault reason 0x25 index 0x0 source 00:01.0")
            .expect_line(
                "ioapic: pin 16 remapped through entry 0x30 to vector 0x54; EOI register clears \
                 remote IRR",
            )
            .expect_line(
                "ioapic: pin 16 level-triggered through entry 0x31 to vector 0x55; the local \
                 APIC's EOI clears remote IRR",
            )
            .expect_line("PASS intremap");
        if eim == "on" {
            run.expect_line(
                "compatibility msi with CFI in x2APIC mode: blocked, fault reason 0x25 index 0x0 \
                 source 00:01.0",
            );
        } else {
            run.expect_line("compatibility msi with CFI: delivered");
        }
        for id in 1..=aps {
            run.expect_line(&format!(
                "cpu {id}: vector 0x58 through entry {:#x} ({mode} destination {id})",
                0x40 + id
            ));
        }
        // Three invalidations, and one per AP for its out-of-reach destination with EIM.
        let stats = IommuStats::of(&run);
        assert_eq!(
            stats.get("iec"),
            3 + if eim == "on" { aps } else { 0 },
            "{run:#?}"
        );
        assert_eq!(stats.get("faults"), faults, "{run:#?}");
    }
    vmm(&[
        "--kernel",
        kernel,
        "--device",
        "edu",
        "--iommu",
        "intremap=off",
        "--cmdline",
        "eim=off cpus=1",
        "--timeout",
        "60",
    ])
    .expect_status(3)
    .expect_line("FAIL intremap: DMAR flags 0x0: want INTR_REMAP without X2APIC_OPT_OUT");
}

/// The `iommu` program drives the unit as Linux does, with the edu device's DMA going through it:
/// 3- and 4-level tables, 4 KiB, 2 MiB and 1 GiB leaves, queued and register-based invalidation,
/// caching mode on and off. Each run checks a round trip through mapped IOVAs, a remapped IOVA
/// seen after page, domain and global invalidation, faults (records and fault-event MSIs) with
/// memory untouched, a pass-through context and translation off; the VMM's statistics line
/// counts what the guest did.
#[test]
fn iommu_translates_remaps_and_faults_as_linux_programs_it() {
    if !kvm_or_skip("iommu_translates_remaps_and_faults_as_linux_programs_it") {
        return;
    }
    let program = guest("iommu");
    for (cmdline, options) in [
        ("levels=4 page=4k inv=qi", ""),
        ("levels=3 page=4k inv=reg", "caching-mode=on"),
        ("levels=4 page=2m inv=qi", "caching-mode=on"),
        ("levels=3 page=2m inv=reg", "aw-bits=39,superpages=2m"),
        ("levels=4 page=1g inv=reg", "qi=off"),
        ("levels=3 page=1g inv=qi", "caching-mode=on,pt=off"),
    ] {
        let run = vmm(&[
            "--kernel",
            program.to_str().unwrap(),
            "--device",
            "edu",
            "--iommu",
            options,
            "--memory",
            "3G",
            "--cmdline",
            cmdline,
            "--timeout",
            "60",
        ]);
        run.expect_status(PASS)
            .expect_line(&format!(
                "dmar: host address width {} drhd 0xfed90000 flags 0x1",
                if options.contains("aw-bits=39") {
                    39
                } else {
                    48
                }
            ))
            .expect_line("dma: 3072 bytes both ways through iova 0x1003000000, checksum 0xacdb45c5")
            .expect_line("unmap: memory untouched")
            .expect_line("translation off: device DMA at physical addresses")
            .expect_line("PASS iommu");
        let cm = if options.contains("caching-mode=on") {
            "on"
        } else {
            "off"
        };
        assert!(
            run.stdout.contains(&format!("caching mode {cm}")),
            "{cmdline} {options}: {run:#?}"
        );
        // The last page of the remapped leaf, whatever its size.
        let probe = if cmdline.contains("page=4k") {
            0x20_0000_0000u64
        } else if cmdline.contains("page=2m") {
            0x20_001f_f000
        } else {
            0x20_3fff_f000
        };
        for kind in ["write", "read"] {
            let reason = if kind == "write" { 5 } else { 6 };
            run.expect_line(&format!(
                "fault: {kind} at iova {probe:#x} by 00:01.0 reason {reason:#x}, event 0x60 delivered"
            ));
        }
        if cmdline.starts_with("levels=3") {
            run.expect_line(
                "fault: read at iova 0x10000000000 by 00:01.0 reason 0x4, event 0x60 delivered",
            );
        }
        if cmdline.ends_with("inv=qi") {
            run.expect_line("wait: completion interrupt 0x61");
        }
        if options.contains("pt=off") {
            run.expect_line("pass-through: not offered (ECAP.PT clear)");
        } else {
            run.expect_line("pass-through context: device DMA at physical addresses");
        }
        assert!(
            run.stdout
                .contains("seen after page, domain and global invalidation"),
            "{run:#?}"
        );
        let stats = IommuStats::of(&run);
        let faults = if cmdline.starts_with("levels=3") {
            3
        } else {
            2
        };
        assert_eq!(stats.get("faults"), faults, "{run:#?}");
        if cmdline.ends_with("inv=reg") {
            assert_eq!(stats.get("wait"), 0, "{run:#?}");
        }
    }
    // Without --iommu the guest finds no DMAR table.
    vmm(&[
        "--kernel",
        program.to_str().unwrap(),
        "--device",
        "edu",
        "--timeout",
        "60",
    ])
    .expect_status(3)
    .expect_line("FAIL iommu: no DMAR table");
}

/// A guest that misprograms the unit on purpose gets the specification's faults and queue errors,
/// and the VMM survives random register writes: no crash, no hang, and DMA works once the guest
/// puts the unit back in order.
#[test]
fn a_misprogrammed_iommu_gets_spec_faults_not_a_vmm_crash() {
    if !kvm_or_skip("a_misprogrammed_iommu_gets_spec_faults_not_a_vmm_crash") {
        return;
    }
    let run = vmm(&[
        "--kernel",
        guest("vtd_abuse").to_str().unwrap(),
        "--device",
        "edu",
        "--iommu",
        "--timeout",
        "60",
    ]);
    run.expect_status(PASS);
    for (what, reason) in [
        ("root table outside RAM", 0x8),
        ("root entry with reserved bits", 0xa),
        ("context table outside RAM", 0x9),
        ("context entry with reserved bits", 0xb),
        ("context entry with an unsupported width", 0x3),
        ("context entry with a reserved translation type", 0x3),
        ("page table outside RAM", 0x7),
        ("paging entry with reserved bits", 0xc),
    ] {
        run.expect_line(&format!("abuse: {what} -> fault reason {reason:#x}"));
    }
    assert!(
        run.stdout
            .contains("abuse: garbage root table -> fault reason")
    );
    for what in [
        "descriptor of reserved type 0",
        "descriptor of type 7",
        "IOTLB descriptor with reserved bits",
        "context descriptor with granularity 0",
        "wait descriptor writing outside RAM",
    ] {
        run.expect_line(&format!("abuse: {what} -> IQE, recovered"));
    }
    run.expect_line("abuse: tail past the queue -> IQE")
        .expect_line("abuse: 10 faults into 8 records -> PFO")
        .expect_line("abuse: random register writes survived")
        .expect_line("abuse: recovered, translation off, DMA works")
        .expect_line("PASS vtd_abuse");
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
}

/// The unit's statistics line on stderr (`vmm: iommu: translations N, iotlb hits N, ...,
/// invalidations: context N, ..., faults N`), by the word before each count: translations, hits,
/// misses, walks, context, global, domain, page, wait, iec, faults.
struct IommuStats(std::collections::BTreeMap<String, u64>);

impl IommuStats {
    fn of(run: &harness::Run) -> IommuStats {
        let line = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("vmm: iommu: "))
            .unwrap_or_else(|| panic!("no statistics line: {run:#?}"));
        IommuStats(
            line.split(", ")
                .map(|item| {
                    let mut words = item.rsplit(' ');
                    let count = words.next().and_then(|c| c.parse().ok());
                    let name = words.next().map(str::to_owned);
                    (name.zip(count))
                        .unwrap_or_else(|| panic!("bad statistics item {item:?}: {line}"))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> u64 {
        *self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in the statistics {:?}", self.0))
    }
}

/// The timed loops of the benchmark guests (resources/bench/compare.py runs them on this VMM and
/// on QEMU) do the work they time: edu DMA with fixed mappings hits the IOTLB; in strict mode
/// every operation walks the tables and is followed by a page-selective invalidation (two under
/// caching mode, where the map is invalidated too); the data arrives; and the virtio-blk loops
/// read and write 4 KiB blocks through the IOMMU, the writes landing in the image.
#[test]
fn benchmark_loops_do_the_work_they_time() {
    if !kvm_or_skip("benchmark_loops_do_the_work_they_time") {
        return;
    }
    let program = guest("dma_loop");
    let ops = 40;
    for (mode, driver, options, walks, pages, waits) in [
        ("fixed", "", "", 2, 0, 2),
        ("strict", "", "", ops, ops, ops + 2),
        (
            "strict",
            "inv=reg levels=3",
            "caching-mode=on",
            ops,
            2 * ops,
            0,
        ),
    ] {
        let cmdline = format!("mode={mode} {driver} ops={ops}");
        let run = vmm(&[
            "--kernel",
            program.to_str().unwrap(),
            "--device",
            "edu",
            "--iommu",
            options,
            "--cmdline",
            &cmdline,
            "--timeout",
            "60",
        ]);
        run.expect_status(PASS).expect_line("PASS dma_loop");
        let end = format!("bench: end dma-{mode} ops={ops} tsc=");
        let part = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(end.as_str()))
            .and_then(|rest| rest.split_once(" part_tsc="))
            .unwrap_or_else(|| panic!("no end line {end:?}: {run:#?}"));
        let (tsc, part): (u64, u64) = (part.0.parse().unwrap(), part.1.parse().unwrap());
        assert!(part < tsc && (part > 0) == (mode == "strict"), "{run:#?}");
        let stats = IommuStats::of(&run);
        assert_eq!(stats.get("translations"), ops, "{cmdline}: {run:#?}");
        assert_eq!(stats.get("hits"), ops - walks, "{cmdline}: {run:#?}");
        assert_eq!(stats.get("walks"), walks, "{cmdline}: {run:#?}");
        assert_eq!(stats.get("page"), pages, "{cmdline}: {run:#?}");
        assert_eq!(stats.get("wait"), waits, "{cmdline}: {run:#?}");
        assert_eq!(stats.get("faults"), 0, "{cmdline}: {run:#?}");
    }
    let run = vmm(&[
        "--kernel",
        program.to_str().unwrap(),
        "--device",
        "edu",
        "--iommu",
        "--cmdline",
        "mode=lazy",
        "--timeout",
        "60",
    ]);
    run.expect_status(3)
        .expect_line("FAIL dma_loop: mode=lazy: expected fixed or strict");

    // 30 writes over a 16-block image: blocks 0-13 hold their second write (n = 16 + k), 14 and
    // 15 their first.
    let disk = scratch_file("virtio-blk-bench.img", &[0xa5; 16 * 4096]);
    let disk_arg = format!("path={}", disk.display());
    let run = vmm(&[
        "--kernel",
        guest("virtio_blk").to_str().unwrap(),
        "--disk",
        &disk_arg,
        "--iommu",
        "--cmdline",
        "bench=on iommu=on ops=30",
        "--timeout",
        "60",
    ]);
    run.expect_status(PASS).expect_line("PASS virtio_blk");
    for kind in ["read", "write"] {
        assert!(
            run.stdout
                .contains(&format!("bench: end blk-{kind} ops=30 tsc=")),
            "{run:#?}"
        );
    }
    let image = std::fs::read(&disk).unwrap();
    assert_eq!(image.len(), 16 * 4096);
    for (block, data) in (0..16u64).zip(image.chunks(4096)) {
        let n = if block < 14 { block + 16 } else { block };
        let (head, rest) = data.split_at(8);
        assert_eq!(head, n.to_le_bytes(), "block {block}");
        assert!(rest.iter().all(|&b| b == 0xa5), "block {block}");
    }
    let stats = IommuStats::of(&run);
    assert!(
        stats.get("translations") >= 60 && stats.get("faults") == 0,
        "{run:#?}"
    );
    std::fs::remove_file(&disk).unwrap();
}

/// FNV-1a, as the guest programs compute it.
fn fnv(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The guest's virtio-blk driver reads the whole disk and checks it against the host's checksum,
/// writes, flushes and reads back, asks for the serial, and sends malformed requests that must
/// fail alone; then the host finds the guest's write in the image file. Read-only, the same
/// driver's write fails and the file is untouched.
#[test]
fn virtio_blk_reads_writes_and_survives_malformed_requests() {
    if !kvm_or_skip("virtio_blk_reads_writes_and_survives_malformed_requests") {
        return;
    }
    let program = guest("virtio_blk");
    let (image, disk, cmdline) = disk_image("virtio-blk.img");
    virtio_blk_round(&program, &image, &disk, &cmdline, &[]);

    // Read-only: the write fails with IOERR and the image stays as it was.
    std::fs::write(&disk, &image).unwrap();
    let disk_arg = format!("path={},readonly=on", disk.display());
    let run = vmm(&[
        "--kernel",
        program.to_str().unwrap(),
        "--disk",
        &disk_arg,
        "--cmdline",
        &cmdline,
        "--timeout",
        "60",
    ]);
    run.expect_status(3)
        .expect_line("FAIL virtio_blk: write: status 1");
    assert_eq!(std::fs::read(&disk).unwrap(), image);
    std::fs::remove_file(&disk).unwrap();
}

/// The same driver behind the VT-d unit: rings, descriptors and buffers at IOVAs it maps (3- and
/// 4-level tables, 4 KiB to 1 GiB leaves, queued and register-based invalidation, caching mode on
/// and off), the disk's checksum read through them and the write found in the image; a buffer at
/// an unmapped IOVA, and one unmapped and invalidated after use, fail with IOERR and a fault.
/// With --iommu but translation off, the driver accepts ACCESS_PLATFORM and works as before.
#[test]
fn virtio_blk_through_the_iommu() {
    if !kvm_or_skip("virtio_blk_through_the_iommu") {
        return;
    }
    let program = guest("virtio_blk");
    let (image, disk, cmdline) = disk_image("virtio-blk-iommu.img");
    for (guest_args, options) in [
        ("", ""),
        ("iommu=on levels=4 page=4k inv=qi", ""),
        (
            "iommu=on levels=3 page=4k inv=reg",
            "caching-mode=on,aw-bits=39",
        ),
        ("iommu=on levels=4 page=2m inv=reg", "qi=off"),
        ("iommu=on levels=3 page=2m inv=qi", "caching-mode=on"),
        ("iommu=on levels=4 page=1g inv=qi", "caching-mode=on"),
    ] {
        std::fs::write(&disk, &image).unwrap();
        let cmdline = format!("{cmdline} {guest_args}");
        let run = virtio_blk_round(&program, &image, &disk, &cmdline, &["--iommu", options]);
        assert!(
            run.stdout.contains("features 0x3"),
            "ACCESS_PLATFORM (bit 33) negotiated: {run:#?}"
        );
        if guest_args.is_empty() {
            continue;
        }
        run.expect_line("iommu: device 00:01.0 uses iovas 0x1000000000 + guest-physical")
            .expect_line("fault: write at iova 0x1080000000 by 00:01.0 reason 0x5");
        let spare = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("unmap: iova "))
            .unwrap_or_else(|| panic!("no unmap line: {run:#?}"));
        let iova = spare.split_whitespace().next().unwrap();
        run.expect_line(&format!(
            "fault: write at iova {iova} by 00:01.0 reason 0x5"
        ));
        assert_eq!(IommuStats::of(&run).get("faults"), 3, "{run:#?}");
    }
    std::fs::remove_file(&disk).unwrap();
}

/// A 96-sector image with a pattern, its file, and the guest's command line for it.
fn disk_image(name: &str) -> (Vec<u8>, std::path::PathBuf, String) {
    let image: Vec<u8> = (0..96 * 512u32)
        .map(|i| ((i * 37 + 11) ^ (i >> 9)) as u8)
        .collect();
    let disk = scratch_file(name, &image);
    let cmdline = format!("sectors=96 sum={:#x} write_sector=40", fnv(&image));
    (image, disk, cmdline)
}

/// One passing run of the virtio_blk driver with `extra` VMM arguments: its checks, and then the
/// image holding exactly the guest's write at sectors 40-47.
fn virtio_blk_round(
    program: &std::path::Path,
    image: &[u8],
    disk: &std::path::Path,
    cmdline: &str,
    extra: &[&str],
) -> harness::Run {
    let disk_arg = format!("path={}", disk.display());
    let mut args = vec![
        "--kernel",
        program.to_str().unwrap(),
        "--disk",
        &disk_arg,
        "--cmdline",
        cmdline,
        "--timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    let run = vmm(&args);
    run.expect_status(PASS)
        .expect_line("virtio-blk at 00:01.0 common 0xc0000000 notify multiplier 4")
        .expect_line(&format!("read: 96 sectors, checksum {:#x}", fnv(image)))
        .expect_line("write: 4096 bytes at sector 40, flushed, read back")
        .expect_line(&format!(
            "serial: {}",
            &disk.file_name().unwrap().to_str().unwrap()[..20]
        ))
        .expect_line("malformed: data outside RAM -> IOERR")
        .expect_line("malformed: data at an unmapped address -> IOERR")
        .expect_line("malformed: data in the wrong direction -> IOERR")
        .expect_line("malformed: segment over size_max -> IOERR")
        .expect_line("malformed: read past the end -> IOERR")
        .expect_line("malformed: descriptor loop -> IOERR")
        .expect_line("PASS virtio_blk");
    // The guest's write landed at sectors 40-47, and nothing else changed.
    let mut expected = image.to_vec();
    expected.splice(
        40 * 512..48 * 512,
        (0..4096usize).map(|i| (i * 13 + 5) as u8),
    );
    let after = std::fs::read(disk).unwrap();
    let differing: std::collections::BTreeSet<usize> = (0..after.len().max(expected.len()))
        .filter(|&i| after.get(i) != expected.get(i))
        .map(|i| i / 512)
        .collect();
    assert!(
        differing.is_empty(),
        "{extra:?}: sectors not as expected: {differing:?}"
    );
    run
}
