#!/usr/bin/env bash
# Obtains the CI kernel and what its initramfs needs, cached outside the repository, and prints the
# cache directory. It holds:
#   bzImage       Debian's cloud kernel (boots through the Linux boot protocol)
#   vmlinux       the same kernel uncompressed from the bzImage (boots through PVH)
#   modules/      the kernel's modules (xz-compressed, as packaged), for the initramfs
#   busybox       busybox-static, for the initramfs
#   VERSION       the kernel package and version
#   SHA256SUMS    checksums of the files above, verified on every use
#
# The kernel is Debian's linux-image-*-cloud-amd64 from bookworm-backports, pinned below by package
# version and sha256. It is fetched with `apt-get download` through a private apt state kept in the
# cache (its own source list and package lists), so the host's apt configuration is never touched
# and nothing on the host is installed or upgraded; the package is unpacked with `dpkg-deb -x`.
# If the archive no longer has the pinned version, the newest 6.12 cloud kernel there is taken with
# a loud warning, and its version and hashes are recorded in the cache (update the pins below).
#
# Once cached, nothing is downloaded. A cached file that fails its checksum (corrupt, truncated) is
# never used: the cache is rebuilt. VMM_CI_KERNEL_OFFLINE=1 turns any download into an error
# (the tests use it to prove the cache is used).
#
# Environment: VMM_CACHE_DIR (default ${XDG_CACHE_HOME:-~/.cache}/vmm).
set -euo pipefail

PKG=linux-image-6.12.95+deb12-cloud-amd64
VERSION=6.12.95-1~bpo12+1
DEB_SHA256=69c92f43b23821de79576fa4d7c86e2924ae2c1b247a47cc5ed9339e220fbcb7
BZIMAGE_SHA256=fadf27c4528461030ddff1d20e6622f76e1e007f7c64796f5ad9b71e37267a6f
VMLINUX_SHA256=6e7bd5d9a92c1d43a891ca5d22c62b5069979bb79f092dcee9ab4b6d9c3ea4d9
SUITE=bookworm-backports
MIRROR=http://deb.debian.org/debian

cache=${VMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmm}
dir=$cache/ci-kernel
mkdir -p "$cache"

say() { echo "ci-kernel: $*" >&2; }
die() { say "$*"; exit 1; }

# Checks the cached files against SHA256SUMS, and the kernel against the pins when it is the pinned
# version. Prints nothing; returns non-zero on any mismatch or missing file.
cache_ok() {
    [ -f "$dir/SHA256SUMS" ] && [ -f "$dir/VERSION" ] || return 1
    (cd "$dir" && sha256sum --check --quiet --strict SHA256SUMS >/dev/null 2>&1) || return 1
    if [ "$(cat "$dir/VERSION")" = "$PKG $VERSION" ]; then
        grep -qx "$BZIMAGE_SHA256  bzImage" "$dir/SHA256SUMS" || return 1
        grep -qx "$VMLINUX_SHA256  vmlinux" "$dir/SHA256SUMS" || return 1
    fi
}

# One fetch at a time per cache (the test harness and the demo may run together).
exec 9>"$cache/ci-kernel.lock"
flock 9

if cache_ok; then
    echo "$dir"
    exit 0
fi
if [ -e "$dir" ]; then
    say "cached kernel in $dir is incomplete or fails its checksums: fetching it again"
fi
if [ "${VMM_CI_KERNEL_OFFLINE:-0}" = 1 ]; then
    die "not cached and VMM_CI_KERNEL_OFFLINE=1: refusing to download"
fi
for tool in apt-get apt-cache dpkg-deb sha256sum python3 zstd; do
    command -v "$tool" >/dev/null || die "needs $tool (a Debian-based host)"
done

work=$(mktemp -d "$cache/ci-kernel.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

# A private apt state: its own source list (bookworm-backports for the kernel, bookworm for
# busybox-static), lists and archive directory. Root's apt would drop privileges to _apt for the
# download, which cannot write into a user's cache; sandboxing is off for the same reason.
apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
printf 'deb %s %s main\ndeb %s bookworm main\n' "$MIRROR" "$SUITE" "$MIRROR" >"$apt_dir/sources.list"
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=/nonexistent"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::Cache=$apt_dir"
    -o "Dir::Cache::Archives=$apt_dir/archives"
    -o "Dir::State::status=/dev/null"
    -o "APT::Sandbox::User=root"
    -o "Debug::NoLocking=1"
)
say "updating the private package lists ($SUITE, bookworm)"
apt-get "${apt_opts[@]}" -qq update >&2

pkg=$PKG
version=$VERSION
if ! apt-cache "${apt_opts[@]}" show "$pkg=$version" >/dev/null 2>&1; then
    pkg=$(apt-cache "${apt_opts[@]}" search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$' |
        awk '{print $1}' | sort -V | tail -n 1)
    [ -n "$pkg" ] || die "$SUITE has no 6.12 cloud kernel"
    version=$(apt-cache "${apt_opts[@]}" show "$pkg" | awk '/^Version:/ {print $2; exit}')
    say "##################################################################################"
    say "WARNING: $SUITE no longer has the pinned $PKG $VERSION."
    say "WARNING: using the newest 6.12 cloud kernel there instead: $pkg $version"
    say "WARNING: its hashes are recorded in $dir/SHA256SUMS; update the pins in $0."
    say "##################################################################################"
fi

say "downloading $pkg $version"
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "$pkg=$version" busybox-static >&2)
deb=$(ls "$work"/linux-image-*.deb)
deb_sha=$(sha256sum "$deb" | awk '{print $1}')
if [ "$pkg $version" = "$PKG $VERSION" ] && [ "$deb_sha" != "$DEB_SHA256" ]; then
    die "$deb: sha256 $deb_sha, expected the pinned $DEB_SHA256"
fi

dpkg-deb -x "$deb" "$work/kernel"
dpkg-deb -x "$(ls "$work"/busybox-static_*.deb)" "$work/busybox-pkg"
mkdir "$work/out"
cp "$work"/kernel/boot/vmlinuz-* "$work/out/bzImage"
cp "$work/busybox-pkg/bin/busybox" "$work/out/busybox"
# The uncompressed kernel is the zstd stream inside the bzImage; modules arrive xz-compressed.
python3 - "$work" <<'EOF'
import os, subprocess, sys
work = sys.argv[1]
image = open(os.path.join(work, "out/bzImage"), "rb").read()
start = image.find(b"\x28\xb5\x2f\xfd")
if start < 0:
    sys.exit("ci-kernel: no zstd stream in the bzImage")
# The zstd CLI stops at the end of the frame and complains about the bytes after it; the frame
# itself is complete, which the ELF check below confirms.
out = subprocess.run(["zstd", "-dcq"], input=image[start:], capture_output=True).stdout
if not out.startswith(b"\x7fELF"):
    sys.exit("ci-kernel: the bzImage's payload is not an ELF")
open(os.path.join(work, "out/vmlinux"), "wb").write(out)
EOF
cp -r "$work"/kernel/lib/modules/*/kernel "$work/out/modules"
echo "$pkg $version" >"$work/out/VERSION"
(cd "$work/out" && { sha256sum bzImage vmlinux busybox VERSION; find modules -type f | sort | xargs sha256sum; } >SHA256SUMS)

rm -rf "$dir"
mv "$work/out" "$dir"
cache_ok || die "the fresh cache in $dir fails its own checks"
say "cached $pkg $version in $dir"
echo "$dir"
