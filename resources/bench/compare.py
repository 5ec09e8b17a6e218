#!/usr/bin/env python3
"""Our VMM and QEMU side by side, on the same guest programs: medians, spread and ratios.

Usage: resources/bench/compare.py [--runs N] [--seconds S] [--vmm PATH] [--guests DIR]

Installs what it needs first (resources/bench/setup.sh: QEMU from bookworm-backports and GNU time,
if missing), builds the release VMM and the guest programs, then runs each workload N times
(default 5) on each VMM, alternating (ours, QEMU, ours, QEMU, ...), and prints a Markdown report:
the machine, the versions, and one table of medians (min-max) with the ratio ours/QEMU of the
medians and the target it is held to. No pass/fail: a run that fails stops the script.

QEMU runs as `-M q35,kernel-irqchip=split -accel kvm -cpu host` with `-device intel-iommu` and
boots the same multiboot ELF files with `-kernel`; both VMMs get 1 vCPU, 512 MiB and the unit.

Workloads (guest programs from resources/guests):
- hello: process start to exit (ACPI power-off), the start-up cost; QEMU once with its default
  firmware (SeaBIOS) and once with qboot, its fastest x86 firmware (our side runs the same again);
- dma_loop: edu DMA through the IOMMU, 4 KiB per operation, mode=fixed (IOTLB hits) and
  mode=strict (map + page-selective invalidation + unmap around every operation); the strict
  loop also reports how much of each operation the guest spent mapping, invalidating and
  unmapping (its TSC share of the host-measured loop time);
- virtio_blk bench=on: 4 KiB reads, then writes, one request at a time through the IOMMU (fixed
  mappings), on a 64 MiB image in /dev/shm;
and the peak RSS of the VMM process in each (GNU time).

A loop is timed on the host by the arrival of its `bench: begin` and `bench: end` lines on the
serial port (stdout); the guest runs it for about --seconds (default 2).
"""
import argparse
import datetime
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ELF = os.path.join(ROOT, "target", "guests", "elf")
VMM = os.path.join(ROOT, "target", "release", "vmm")
END = re.compile(rb"bench: end (\S+) ops=(\d+) tsc=(\d+) part_tsc=(\d+)")
BEGIN = re.compile(rb"bench: begin (\S+)")
QBOOT = "/usr/share/qemu/qboot.rom"


class Workload:
    """One guest program with its arguments for each VMM and the exit status a pass gives."""

    def __init__(self, name, elf, cmdline, ours, qemu, status):
        self.name, self.elf, self.cmdline = name, elf, cmdline
        self.ours, self.qemu, self.status = ours, qemu, status

    def argv(self, which):
        kernel = os.path.join(ELF, self.elf)
        if which == "ours":
            return [VMM, "--kernel", kernel, "--cmdline", self.cmdline, "--memory", "512M",
                    "--iommu"] + self.ours
        return ["qemu-system-x86_64", "-M", "q35,kernel-irqchip=split", "-accel", "kvm",
                "-cpu", "host", "-smp", "1", "-m", "512M", "-nodefaults", "-display", "none",
                "-serial", "stdio", "-no-reboot",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                "-device", "intel-iommu,aw-bits=48"] + self.qemu + [
                "-kernel", kernel, "-append", self.cmdline]


def run(argv, want_status, timeout):
    """Runs argv under GNU time; returns (seconds from start to exit, peak RSS in KiB,
    {loop name: (seconds, ops, tsc, part_tsc)}). Exits the script if the run fails."""
    with tempfile.NamedTemporaryFile() as rss, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        # Its own process group, so the watchdog stops the VMM too, not only GNU time (the VMM
        # would keep the pipe open and the read below waiting).
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name] + argv,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                bufsize=0, start_new_session=True)
        watchdog = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        watchdog.start()
        begun, loops, lines = {}, {}, []
        for line in iter(proc.stdout.readline, b""):
            now = time.perf_counter()
            lines.append(line)
            if m := BEGIN.match(line):
                begun[m[1].decode()] = now
            elif (m := END.match(line)) and m[1].decode() in begun:
                name = m[1].decode()
                loops[name] = (now - begun[name], int(m[2]), int(m[3]), int(m[4]))
        status = proc.wait()
        watchdog.cancel()
        wall = time.perf_counter() - start
        if status != want_status or not any(b"PASS" in line for line in lines):
            err.seek(0)
            sys.exit(f"compare.py: {' '.join(argv)}\nexited with status {status} "
                     f"(want {want_status}); output:\n"
                     + b"".join(lines[-20:]).decode(errors="replace")
                     + err.read().decode(errors="replace")[-2000:])
        return wall, int(open(rss.name).read().split()[-1]), loops


def spread(values, scale, digits):
    med = statistics.median(values)
    return med, (f"{med * scale:.{digits}f} ({min(values) * scale:.{digits}f}-"
                 f"{max(values) * scale:.{digits}f})")


def version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs of each workload on each VMM")
    p.add_argument("--seconds", type=int, default=2, help="length of each guest loop")
    p.add_argument("--vmm", help="our VMM binary to run (default: build the release one)")
    p.add_argument("--guests", help="directory of built guest programs (default: build them)")
    args = p.parse_args()
    if args.runs < 1 or args.seconds < 1:
        sys.exit("compare.py: --runs and --seconds must be at least 1")

    subprocess.run(["bash", os.path.join(ROOT, "resources/bench/setup.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    global VMM, ELF
    if args.vmm:
        VMM = os.path.abspath(args.vmm)
    else:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "vmm"], cwd=ROOT, check=True)
    if args.guests:
        ELF = os.path.abspath(args.guests)
    else:
        subprocess.run(["bash", "resources/guests/build.sh", ELF], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # The image lives in memory (tmpfs) where there is one, so the host's disk and its writeback
    # stay out of the figures.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        image = os.path.join(tmp, "bench.img")
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        secs = f"seconds={args.seconds}"
        edu = (["--device", "edu"], ["-device", "edu"])
        disk = (["--disk", f"path={image}"],
                ["-drive", f"file={image},if=none,id=d0,format=raw",
                 "-device", "virtio-blk-pci,drive=d0,disable-legacy=on,iommu_platform=on"])
        workloads = [Workload("hello", "hello.elf", "", [], [], 0)]
        if os.path.exists(QBOOT):
            workloads.append(Workload("hello, QEMU with qboot", "hello.elf", "", [],
                                      ["-bios", QBOOT], 0))
        workloads += [
            Workload("dma_loop fixed", "dma_loop.elf", f"mode=fixed {secs}", *edu, 1),
            Workload("dma_loop strict", "dma_loop.elf", f"mode=strict {secs}", *edu, 1),
            Workload("virtio_blk", "virtio_blk.elf", f"bench=on iommu=on {secs}", *disk, 1),
        ]
        results = {}
        timeout = 120 + 4 * args.seconds
        for w in workloads:
            for i in range(args.runs):
                for which in ("ours", "qemu"):
                    print(f"{w.name}: {which} run {i + 1}/{args.runs}", file=sys.stderr)
                    results.setdefault((w.name, which), []).append(
                        run(w.argv(which), w.status, timeout))

    def metric(workload, which, pick):
        return [pick(r) for r in results[(workload, which)]]

    def loop_rate(name):
        return lambda r: r[2][name][1] / r[2][name][0]

    def part_us(name):
        return lambda r: r[2][name][3] / r[2][name][2] * r[2][name][0] / r[2][name][1] * 1e6

    # (what, unit, workload, pick, scale, digits, target: (op, ratio) or None)
    rows = [
        ("hello: start to exit", "ms", "hello", lambda r: r[0], 1e3, 1, ("<=", 0.2)),
        ("hello: start to exit, QEMU with qboot", "ms", "hello, QEMU with qboot",
         lambda r: r[0], 1e3, 1, ("<=", 0.2)),
        ("edu DMA 4 KiB, fixed mapping", "ops/s", "dma_loop fixed", loop_rate("dma-fixed"),
         1, 0, (">=", 1.5)),
        ("edu DMA 4 KiB, map + PSI + unmap per op", "ops/s", "dma_loop strict",
         loop_rate("dma-strict"), 1, 0, (">=", 1.5)),
        ("... of which map + PSI + unmap", "µs/op", "dma_loop strict", part_us("dma-strict"),
         1, 1, None),
        ("virtio-blk 4 KiB reads", "requests/s", "virtio_blk", loop_rate("blk-read"), 1, 0,
         None),
        ("virtio-blk 4 KiB writes", "requests/s", "virtio_blk", loop_rate("blk-write"), 1, 0,
         None),
    ] + [(f"peak RSS, {w.name}", "MiB", w.name, lambda r: r[1], 1 / 1024, 1, ("<=", 0.25))
         for w in workloads]

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown")
    kvm = "kvm_pvm (software KVM)" if os.path.exists("/sys/module/kvm_pvm") else "kvm"
    commit = version(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    print(f"{datetime.date.today().isoformat()}, `resources/bench/compare.py --runs {args.runs} "
          f"--seconds {args.seconds}` at {commit}\n")
    debian = version(["cat", "/etc/debian_version"])
    print(f"- machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, {kvm}, "
          f"Debian {debian}")
    build = f"binary {VMM}" if args.vmm else "release build"
    print(f"- ours: {version([VMM, '--version'])}, {version(['rustc', '--version'])}, {build}")
    print(f"- QEMU: {version(['qemu-system-x86_64', '--version'])}")
    print(f"- {args.runs} runs of each workload on each VMM, alternating; loops of about "
          f"{args.seconds} s; figures are median (min-max)\n")
    print("| benchmark | unit | ours | QEMU | ours/QEMU | target |")
    print("|---|---|---|---|---|---|")
    for what, unit, workload, pick, scale, digits, target in rows:
        if (workload, "ours") not in results:
            continue
        ours, ours_text = spread(metric(workload, "ours", pick), scale, digits)
        qemu, qemu_text = spread(metric(workload, "qemu", pick), scale, digits)
        ratio = ours / qemu if qemu else float("inf")
        verdict = "-"
        if target:
            op, want = target
            met = ratio <= want if op == "<=" else ratio >= want
            verdict = f"{op} {want}: {'met' if met else 'MISSED'}"
        print(f"| {what} | {unit} | {ours_text} | {qemu_text} | {ratio:.3g} | {verdict} |")
    print("\nQEMU's edu device completes a transfer 100 ms (virtual clock) after it is started, so its"
          " edu DMA rows measure that timer; the IOMMU work is compared in the map + PSI + unmap"
          " row, and DMA at full speed in the virtio-blk rows.")
    if "kvm_pvm" in kvm:
        print("On this software KVM, QEMU's default start-up is mostly SeaBIOS, whose real-mode and"
              " ring-0 code the KVM module emulates instruction by instruction; qboot does far less.")


if __name__ == "__main__":
    main()
