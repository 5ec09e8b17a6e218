#!/usr/bin/env python3
"""Process start to exit, and peak RSS, of `vmm --kernel hello.elf`: median of N runs.

Usage: resources/bench/startup.py [RUNS] [extra vmm arguments...]
Builds the release VMM and the guest programs first. Prints one line per figure; no pass/fail.
Times include GNU time's own start-up (about a millisecond). Each run goes through GNU time (Debian package `time`): a child forked from Python would carry
Python's own resident set into the VMM's peak RSS, which survives exec.
"""
import os
import statistics
import subprocess
import sys
import time

root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
extra = sys.argv[2:]

subprocess.run(["cargo", "build", "--release", "-q", "-p", "vmm"], cwd=root, check=True)
subprocess.run(["bash", "resources/guests/build.sh", "target/guests/elf"], cwd=root, check=True,
               stdout=subprocess.DEVNULL)
cmd = [os.path.join(root, "target/release/vmm"), "--kernel",
       os.path.join(root, "target/guests/elf/hello.elf"), "--serial", "off"] + extra

if not os.access("/usr/bin/time", os.X_OK):
    sys.exit("startup.py: needs GNU time: apt-get install time")

times, rss = [], []
for _ in range(runs):
    start = time.perf_counter()
    timed = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stderr=subprocess.PIPE, text=True)
    times.append(time.perf_counter() - start)
    if timed.returncode != 0:
        sys.exit(f"run failed with status {timed.returncode}: {' '.join(cmd)}\n{timed.stderr}")
    rss.append(int(timed.stderr.strip().splitlines()[-1]))

print(f"command: {' '.join(cmd)}")
print(f"runs: {runs}")
print(f"start to exit: median {statistics.median(times) * 1000:.1f} ms "
      f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
print(f"peak RSS: median {statistics.median(rss) / 1024:.1f} MiB "
      f"(min {min(rss) / 1024:.1f}, max {max(rss) / 1024:.1f})")
