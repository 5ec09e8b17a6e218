#!/usr/bin/env bash
# Installs the host packages the test suite and the demo use, if they are missing. Idempotent:
# nothing is installed or upgraded when everything is present.
#   acpica-tools  iasl, to check our ACPI tables with an independent parser
#   binutils      as, ld, objcopy: the hand-assembled test kernels and the guest programs' ELF32 form
#   zstd          to uncompress the CI kernel's vmlinux from its bzImage (resources/linux)
set -euo pipefail
need=()
command -v iasl >/dev/null || need+=(acpica-tools)
command -v objcopy >/dev/null && command -v as >/dev/null || need+=(binutils)
command -v zstd >/dev/null || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade "${need[@]}"
fi
