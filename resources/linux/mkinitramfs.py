#!/usr/bin/env python3
"""Builds the CI initramfs: an uncompressed newc cpio archive, written without root (device nodes
are just archive entries) and byte-for-byte reproducible (fixed timestamps and inode numbers).

Usage: mkinitramfs.py CACHE_DIR OUT [MODULE...]
CACHE_DIR is what ci-kernel.sh prints; MODULE names default to virtio_blk. Each module's
dependencies (its modinfo `depends=`) are added before it.
"""
import lzma
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def assemble(source):
    """A static x86_64 program from one assembly file, with binutils."""
    with tempfile.TemporaryDirectory() as tmp:
        obj, exe = os.path.join(tmp, "prog.o"), os.path.join(tmp, "prog")
        subprocess.run(["as", "--64", source, "-o", obj], check=True)
        subprocess.run(["ld", "-static", "-s", obj, "-o", exe], check=True)
        return open(exe, "rb").read()


def module_index(cache):
    """Module name (dashes as underscores) -> path of its .ko.xz in the cache."""
    index = {}
    for root, _, files in os.walk(os.path.join(cache, "modules")):
        for f in files:
            if f.endswith(".ko.xz"):
                index[f[: -len(".ko.xz")].replace("-", "_")] = os.path.join(root, f)
    return index


def modinfo(image, key):
    tag = key.encode() + b"="
    at = image.find(tag)
    if at < 0:
        return ""
    return image[at + len(tag) : image.index(b"\0", at)].decode()


def resolve(names, index):
    """The modules to load, dependencies first, each once: [(name, bytes)]."""
    ordered, seen = [], set()

    def visit(name, chain):
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            sys.exit(f"mkinitramfs: module dependency loop: {' -> '.join(chain + [name])}")
        if name not in index:
            sys.exit(f"mkinitramfs: no module {name} in the kernel package")
        image = lzma.open(index[name]).read()
        for dep in filter(None, modinfo(image, "depends").split(",")):
            visit(dep, chain + [name])
        seen.add(name)
        ordered.append((name, image))

    for n in names:
        visit(n, [])
    return ordered


class Cpio:
    def __init__(self):
        self.data = bytearray()
        self.ino = 0

    def _entry(self, name, mode, body=b"", rdev=(0, 0)):
        self.ino += 1
        name_bytes = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields) + name_bytes
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += body
        self.data += b"\0" * (-len(self.data) % 4)

    def dir(self, name):
        self._entry(name, 0o040755)

    def file(self, name, body, perm=0o644):
        self._entry(name, 0o100000 | perm, body)

    def chardev(self, name, major, minor):
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        return bytes(self.data)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cache, out, names = sys.argv[1], sys.argv[2], sys.argv[3:] or ["virtio_blk"]
    modules = resolve(names, module_index(cache))
    archive = Cpio()
    for d in ["bin", "dev", "etc", "lib", "lib/modules", "mnt", "proc", "root", "sys", "tmp"]:
        archive.dir(d)
    # The kernel opens /dev/console for init's standard streams before devtmpfs is mounted.
    archive.chardev("dev/console", 5, 1)
    archive.file("bin/busybox", open(os.path.join(cache, "busybox"), "rb").read(), 0o755)
    archive.file("init", open(os.path.join(HERE, "init"), "rb").read(), 0o755)
    archive.file("bin/vmm-exit", assemble(os.path.join(HERE, "vmm-exit.S")), 0o755)
    for name, image in modules:
        archive.file(f"lib/modules/{name}.ko", image)
    archive.file("etc/modules-load", "".join(f"{n}\n" for n, _ in modules).encode())
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(archive.finish())
    os.replace(tmp, out)
    print(out)


if __name__ == "__main__":
    main()
