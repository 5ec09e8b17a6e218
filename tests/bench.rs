//! The side-by-side benchmark runner (resources/bench/compare.py) against QEMU: one short round, so
//! that a change to a guest program, to our command line or to QEMU's that breaks a workload on
//! either VMM shows here. The runner exits non-zero if any run fails or does not print PASS.

mod harness;

use std::process::Command;

use harness::{guest, kvm_or_skip, root, skip};

#[test]
fn compare_runs_every_workload_on_both_vmms() {
    let test = "compare_runs_every_workload_on_both_vmms";
    if !kvm_or_skip(test) {
        return;
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        skip(
            test,
            "no qemu-system-x86_64 (resources/bench/setup.sh installs it)",
        );
        return;
    }
    if !std::path::Path::new("/usr/bin/time").exists() {
        skip(test, "no GNU time (resources/bench/setup.sh installs it)");
        return;
    }
    let elf = guest("hello");
    let out = Command::new("python3")
        .arg(root().join("resources/bench/compare.py"))
        .args([
            "--runs",
            "1",
            "--seconds",
            "1",
            "--vmm",
            env!("CARGO_BIN_EXE_vmm"),
        ])
        .arg("--guests")
        .arg(elf.parent().unwrap())
        .output()
        .expect("run compare.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compare.py failed:\n{stdout}\n{stderr}"
    );
    // compare.py runs QEMU with qboot only where QEMU ships the ROM.
    let qboot = std::path::Path::new("/usr/share/qemu/qboot.rom").exists();
    let qboot_row = ["| hello: start to exit, QEMU with qboot | ms |"];
    for row in qboot_row.iter().filter(|_| qboot).chain(&[
        "| hello: start to exit | ms |",
        "| edu DMA 4 KiB, fixed mapping | ops/s |",
        "| edu DMA 4 KiB, map + PSI + unmap per op | ops/s |",
        "| ... of which map + PSI + unmap | µs/op |",
        "| virtio-blk 4 KiB reads | requests/s |",
        "| virtio-blk 4 KiB writes | requests/s |",
        "| peak RSS, hello | MiB |",
        "| peak RSS, virtio_blk | MiB |",
    ]) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}"));
        // ours | QEMU | ratio | target: both medians and the ratio are positive numbers.
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let number = |cell: &str| {
            cell.split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|n| *n > 0.0)
                .unwrap_or_else(|| panic!("{cell:?} is not a positive figure in {line:?}"))
        };
        let figures = cells.get(3..6).filter(|_| cells.len() == 8);
        for cell in figures.unwrap_or_else(|| panic!("not 6 columns: {line}")) {
            number(cell);
        }
    }
}
