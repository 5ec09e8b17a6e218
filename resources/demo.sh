#!/usr/bin/env bash
# The README's demo: fetches the CI kernel (Debian's 6.12 cloud kernel, cached outside the repo),
# builds its initramfs and the VMM, and boots Linux on 2 vCPUs with 1 GiB behind the emulated VT-d
# unit (--iommu, intel_iommu=on), with an edu DMA test device. Extra arguments go to the VMM.
#
# Where KVM is hardware-assisted it reaches a shell on the console (exit the shell to power off, or
# Ctrl-A x to quit). Where /dev/kvm is a software KVM (no vmx/svm in /proc/cpuinfo, see
# ../shared/reference/platform.md) Linux cannot finish booting: the demo then boots the uncompressed
# kernel through PVH with the options that take it furthest, and the guest stops where the
# emulator's gaps stop it (two to three minutes in, at the kernel's int3 self-test).
set -euo pipefail
cd "$(dirname "$0")/.."
resources/setup.sh
cargo build --release -p vmm
kernel=$(resources/linux/ci-kernel.sh)
mkdir -p target/linux
initramfs=target/linux/demo-initramfs.cpio
python3 resources/linux/mkinitramfs.py "$kernel" "$initramfs" >/dev/null
if grep -qwE 'vmx|svm' /proc/cpuinfo; then
    image=$kernel/bzImage
    cmdline="console=ttyS0 intel_iommu=on"
else
    echo "demo: /dev/kvm here is not hardware-assisted, so Linux cannot finish booting; showing how far it gets." >&2
    image=$kernel/vmlinux
    cmdline="console=ttyS0 earlyprintk=serial noxsave clearcpuid=cx16,popcnt,rdrand,rdseed,fsgsbase,smap,pcid,invpcid,bmi1,bmi2,rdpid,pku,movbe intel_iommu=on"
fi
exec target/release/vmm --kernel "$image" --initramfs "$initramfs" --cmdline "$cmdline" --cpus 2 --memory 1G --iommu --device edu "$@"
