#!/bin/sh
# Builds every guest program as a multiboot (ELF32) kernel into OUT_DIR.
# Usage: resources/guests/build.sh OUT_DIR
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target="$repo/target/guests"
mkdir -p "$1"
out=$(cd "$1" && pwd)

cargo build --release --manifest-path "$here/Cargo.toml" --target-dir "$target"

for src in "$here"/src/bin/*.rs; do
    name=$(basename "$src" .rs)
    objcopy -O elf32-i386 "$target/release/$name" "$out/$name.elf"
    echo "$out/$name.elf"
done
