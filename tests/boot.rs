//! Booting guests through the real `vmm` binary: boot protocols, exit statuses, crashes, timeouts
//! and bad input.

#![allow(clippy::indexing_slicing)]

mod harness;

use harness::{asm_kernel, kvm_or_skip, scratch_file, vmm, vmm_with_input};

/// The exit status for a guest verdict v written to port 0xf4.
fn verdict(v: i32) -> i32 {
    (v << 1) | 1
}

#[test]
fn multiboot_kernel_built_elsewhere_returns_its_verdict() {
    if !kvm_or_skip("multiboot_kernel_built_elsewhere_returns_its_verdict") {
        return;
    }
    let k = asm_kernel("multiboot-asm");
    let k = k.to_str().unwrap();
    vmm(&["--kernel", k, "--cmdline", "exit=0"])
        .expect_status(verdict(0))
        .expect_line("multiboot-asm: cmdline: exit=0");
    vmm(&[
        "--kernel",
        k,
        "--cmdline",
        "some words then exit=5",
        "--cpus",
        "2",
        "--memory",
        "64M",
    ])
    .expect_status(verdict(5))
    .expect_line("multiboot-asm: cmdline: some words then exit=5");
}

/// Standard input reaches the guest's COM1 byte for byte, also when it is far larger than the
/// UART's receive FIFO.
#[test]
fn serial_input_reaches_the_guest_in_full() {
    if !kvm_or_skip("serial_input_reaches_the_guest_in_full") {
        return;
    }
    let k = asm_kernel("multiboot-asm");
    let text: String = (0..600)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let input = format!("{text}!");
    let run = vmm_with_input(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "echo",
            "--timeout",
            "60",
        ],
        Some(input.as_bytes()),
    );
    run.expect_status(verdict(0)).expect_line(&text);
}

#[test]
fn serial_output_goes_to_a_file_or_nowhere() {
    if !kvm_or_skip("serial_output_goes_to_a_file_or_nowhere") {
        return;
    }
    let k = asm_kernel("multiboot-asm");
    let out = std::env::temp_dir().join(format!("vmm-serial-{}", std::process::id()));
    let file_arg = format!("file={}", out.display());
    let run = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "exit=0",
        "--serial",
        &file_arg,
    ]);
    run.expect_status(verdict(0));
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "multiboot-asm: cmdline: exit=0\n"
    );
    std::fs::remove_file(&out).unwrap();
    let run = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "exit=0",
        "--serial",
        "off",
    ]);
    run.expect_status(verdict(0));
    assert!(run.stdout.is_empty() && run.stderr.is_empty(), "{run:#?}");
}

#[test]
fn poweroff_and_reset_end_the_vm_with_status_zero() {
    if !kvm_or_skip("poweroff_and_reset_end_the_vm_with_status_zero") {
        return;
    }
    let k = asm_kernel("multiboot-asm");
    for cmd in ["poweroff", "reset"] {
        let run = vmm(&[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            cmd,
            "--timeout",
            "30",
        ]);
        run.expect_status(0);
        assert!(run.stderr.is_empty(), "{cmd}: {run:#?}");
    }
}

#[test]
fn triple_fault_is_a_crash_with_registers() {
    if !kvm_or_skip("triple_fault_is_a_crash_with_registers") {
        return;
    }
    let run = vmm(&[
        "--kernel",
        asm_kernel("multiboot-asm").to_str().unwrap(),
        "--cmdline",
        "crash",
        "--cpus",
        "2",
    ]);
    run.expect_status(4);
    assert!(
        run.stderr
            .starts_with("vmm: guest crashed: triple fault on vCPU 0\n"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("rip ") && run.stderr.contains("cr0 "),
        "{run:#?}"
    );
    assert_eq!(
        run.stderr.matches("guest crashed").count(),
        1,
        "reported once: {run:#?}"
    );
}

#[test]
fn timeout_stops_every_vcpu_of_a_hung_guest() {
    if !kvm_or_skip("timeout_stops_every_vcpu_of_a_hung_guest") {
        return;
    }
    let k = asm_kernel("multiboot-asm");
    let run = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--cmdline",
        "hang",
        "--timeout",
        "0.5",
        "--cpus",
        "4",
    ]);
    run.expect_status(124);
    assert!(
        run.stderr.contains("did not finish within --timeout 0.5s"),
        "{run:#?}"
    );
    for cpu in 0..4 {
        assert!(
            run.stderr.contains(&format!("vCPU {cpu} stopped at rip")),
            "vCPU {cpu}: {run:#?}"
        );
    }
}

#[test]
fn pvh_kernel_gets_start_info_cmdline_rsdp_memmap_and_module() {
    if !kvm_or_skip("pvh_kernel_gets_start_info_cmdline_rsdp_memmap_and_module") {
        return;
    }
    let k = asm_kernel("pvh-asm");
    let module = scratch_file("pvh-module", b"first module\n\0");
    for memory in ["256M", "6G"] {
        vmm(&[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 pvh",
            "--memory",
            memory,
        ])
        .expect_status(verdict(0))
        .expect_line("pvh-asm: cmdline: console=ttyS0 pvh")
        .expect_line("pvh-asm: done");
    }
    vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--initramfs",
        module.to_str().unwrap(),
    ])
    .expect_status(verdict(0))
    .expect_line("pvh-asm: module: first module");
    std::fs::remove_file(module).unwrap();
}

#[test]
fn bzimage_64bit_entry_gets_zero_page_cmdline_e820_rsdp_and_initramfs() {
    if !kvm_or_skip("bzimage_64bit_entry_gets_zero_page_cmdline_e820_rsdp_and_initramfs") {
        return;
    }
    let k = asm_kernel("bzimage-asm");
    let initrd = scratch_file("bz-initrd", b"initramfs contents\n\0");
    for (memory, cpus) in [("128M", "1"), ("6G", "2")] {
        vmm(&[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "root=/dev/vda quiet",
            "--memory",
            memory,
            "--cpus",
            cpus,
            "--initramfs",
            initrd.to_str().unwrap(),
        ])
        .expect_status(verdict(0))
        .expect_line("bzimage-asm: cmdline: root=/dev/vda quiet")
        .expect_line("bzimage-asm: initramfs: initramfs contents")
        .expect_line("bzimage-asm: done");
    }
    std::fs::remove_file(initrd).unwrap();
}

/// The line-discipline modes the VMM switches off in raw mode.
fn terminal_modes(fd: &std::os::fd::OwnedFd) -> libc::tcflag_t {
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the termios of a valid terminal descriptor, checked by its result.
    let rc = unsafe { libc::tcgetattr(std::os::fd::AsRawFd::as_raw_fd(fd), termios.as_mut_ptr()) };
    assert_eq!(rc, 0, "tcgetattr");
    // SAFETY: filled by the successful tcgetattr above.
    unsafe { termios.assume_init() }.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG)
}

/// At a terminal the console is raw (the guest's echo is the only echo), Ctrl-A Ctrl-A sends a
/// Ctrl-A, and Ctrl-A x quits with status 0; the terminal's settings are restored afterwards.
#[test]
fn terminal_console_is_raw_and_ctrl_a_x_quits() {
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    if !kvm_or_skip("terminal_console_is_raw_and_ctrl_a_x_quits") {
        return;
    }
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the given integers; no name, termios or size.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just created and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let modes_before = terminal_modes(&slave);
    let k = asm_kernel("multiboot-asm");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "echo",
            "--timeout",
            "60",
        ])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut term = std::fs::File::from(master);
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !seen.ends_with(b"cmdline: echo\r\n") {
        let n = term.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    term.write_all(b"typed\x01\x01z").unwrap();
    let want = b"typed\x01z";
    let mut echoed = Vec::new();
    while echoed.len() < want.len() {
        let n = term.read(&mut buf).unwrap();
        echoed.extend_from_slice(&buf[..n]);
    }
    assert_eq!(echoed, want, "echoed once, by the guest only");
    term.write_all(b"\x01x").unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr.trim_end(), "vmm: quit from the console (Ctrl-A x)");
    assert_eq!(
        terminal_modes(&slave),
        modes_before,
        "terminal modes restored"
    );
}

/// The VMM running the assembly multiboot kernel that hangs, with `extra` arguments and a 60 s
/// timeout; output piped.
fn hanging_guest(extra: &[&str]) -> std::process::Child {
    let k = asm_kernel("multiboot-asm");
    std::process::Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "hang",
            "--timeout",
            "60",
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERM stops the VM in order: every vCPU thread stops and the VMM exits with 128 + 15.
#[test]
fn sigterm_stops_the_vm_in_order() {
    if !kvm_or_skip("sigterm_stops_the_vm_in_order") {
        return;
    }
    let child = hanging_guest(&["--cpus", "2"]);
    // Once the guest has printed, the VM (and its signal handling) is up.
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert_eq!(stderr.trim_end(), "vmm: stopped by signal 15");
}

/// With --iommu, SIGUSR1 prints the unit's statistics line and the VM goes on; the line is printed
/// again when the VMM stops.
#[test]
fn sigusr1_prints_the_iommu_statistics() {
    if !kvm_or_skip("sigusr1_prints_the_iommu_statistics") {
        return;
    }
    let child = hanging_guest(&["--iommu"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let stats = "vmm: iommu: translations 0, iotlb hits 0, misses 0, walks 0, invalidations: \
                 context 0, global 0, domain 0, page 0, wait 0, iec 0, faults 0";
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        vec![stats, stats, "vmm: stopped by signal 15"],
        "{stderr}"
    );
}

/// Every bad input gets exactly one line on stderr, naming the problem, and status 2.
#[test]
fn bad_input_gets_a_one_line_error() {
    let dir = std::env::temp_dir().join(format!("vmm-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage");
    std::fs::write(&garbage, [0x5a; 4096]).unwrap();
    let garbage = garbage.to_str().unwrap();
    let big = dir.join("big-initramfs");
    std::fs::write(&big, vec![0u8; 8 << 20]).unwrap();
    let big = big.to_str().unwrap().to_owned();
    let pvh = asm_kernel("pvh-asm").to_str().unwrap().to_owned();
    let bz = asm_kernel("bzimage-asm").to_str().unwrap().to_owned();
    let long_cmdline = "x".repeat(3000);
    let dirname = dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kernel", "/nonexistent/kernel"],
            "cannot open kernel '/nonexistent/kernel'",
        ),
        (vec!["--kernel", garbage], "unrecognised kernel image"),
        (vec!["--kernel", dirname], "Is a directory"),
        (vec!["--kernel", "/bin/true"], "kernel segment 0x0-"),
        (
            vec!["--kernel", garbage, "--memory", "12X"],
            "'12X' is not a size",
        ),
        (vec!["--kernel", garbage, "--memory", "1M"], "too small"),
        (vec!["--kernel", garbage, "--cpus", "0"], "--cpus"),
        (vec!["--kernel", garbage, "--serial", "tty"], "--serial"),
        (vec!["--kernel", garbage, "--timeout=-3"], "--timeout"),
        (vec!["--cpus", "2"], "--kernel"),
        (
            vec!["--kernel", &pvh, "--initramfs", "/nonexistent/initrd"],
            "cannot open initramfs",
        ),
        (
            vec!["--kernel", &pvh, "--memory", "6M", "--initramfs", &big],
            "does not fit in guest RAM",
        ),
        (
            vec!["--kernel", &bz, "--cmdline", &long_cmdline],
            "this kernel accepts at most 2047",
        ),
        (
            vec!["--kernel", &pvh, "--disk", "path=/nonexistent/disk.img"],
            "cannot open disk '/nonexistent/disk.img'",
        ),
        (
            vec!["--kernel", &pvh, "--disk", "path=x,readonly=maybe"],
            "readonly=maybe: expected on or off",
        ),
        (vec!["--kernel", &pvh, "--disk", "x.img"], "--disk"),
        (
            vec!["--kernel", &pvh, "--iommu", "aw-bits=57"],
            "aw-bits=57: expected 39 or 48",
        ),
        (
            vec!["--kernel", &pvh, "--iommu", "fault-records=500"],
            "fault-records=500: expected 1 to 128",
        ),
        (
            vec!["--kernel", &pvh, "--iommu", "ir=on"],
            "unknown option 'ir'",
        ),
    ];
    for (args, needle) in cases {
        let run = vmm(&args);
        assert_eq!(run.status, 2, "{args:?}: {run:#?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: want one line: {run:#?}");
        assert!(
            lines[0].starts_with("vmm: ") && lines[0].contains(needle),
            "{args:?}: {run:#?}"
        );
        assert!(!run.stderr.contains("panicked"), "{args:?}: {run:#?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without permission on /dev/kvm the VMM says so in one line.
#[test]
fn no_permission_on_dev_kvm_is_a_one_line_error() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !std::path::Path::new("/dev/kvm").exists() {
        harness::skip(
            "no_permission_on_dev_kvm_is_a_one_line_error",
            "needs root (to drop to nobody) and /dev/kvm",
        );
        return;
    }
    // The binary and the kernel go where `nobody` can reach them, wherever the checkout lives.
    let dir = std::env::temp_dir().join(format!("vmm-nobody-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (vmm, kernel) = (dir.join("vmm"), dir.join("kernel"));
    std::fs::copy(env!("CARGO_BIN_EXE_vmm"), &vmm).unwrap();
    std::fs::copy(asm_kernel("multiboot-asm"), &kernel).unwrap();
    for (path, mode) in [(&dir, 0o755), (&vmm, 0o755), (&kernel, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // setpriv is in util-linux, present on every Debian system.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&vmm)
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .expect("run setpriv");
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "vmm: cannot open /dev/kvm: Permission denied (os error 13)"
    );
}
