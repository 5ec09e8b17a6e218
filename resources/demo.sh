#!/usr/bin/env bash
# The README's demo: builds the VMM and the guest programs (cached by cargo), then boots the `hello`
# guest on 2 vCPUs. Extra arguments go to the VMM (e.g. --serial file=out.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
resources/setup.sh
cargo build --release -p vmm
bash resources/guests/build.sh target/guests/elf >/dev/null
exec target/release/vmm --kernel target/guests/elf/hello.elf --cpus 2 --memory 512M "$@"
