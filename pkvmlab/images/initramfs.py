"""Write a Linux initramfs (cpio "newc") in Python.

No cpio binary and no root are needed: device nodes such as /dev/console are
just header fields.  Output is deterministic (mtime 0, sorted entries), so the
same inputs give the same sha256 and the cache can key on it.
"""

import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    path: str          # without leading '/'
    mode: int          # full st_mode (type | permissions)
    data: bytes = b""
    rdev: tuple = (0, 0)


def directory(path, perm=0o755):
    return Entry(path, stat.S_IFDIR | perm)


def regular(path, data, perm=0o755):
    return Entry(path, stat.S_IFREG | perm, data)


def symlink(path, target):
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def char_device(path, major, minor, perm=0o600):
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(length):
    return b"\0" * (-length % 4)


def _header(ino, entry, name_size):
    fields = [ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
              0, 0, entry.rdev[0], entry.rdev[1], name_size, 0]
    return b"070701" + b"".join(f"{value:08x}".encode() for value in fields)


def build_cpio(entries):
    """The newc archive of ``entries`` (parents must be listed before children)."""
    out = bytearray()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        name = entry.path.strip("/").encode() + b"\0"
        out += _header(ino, entry, len(name)) + name
        out += _pad4(len(out))
        out += entry.data + _pad4(len(entry.data))
    trailer = b"TRAILER!!!\0"
    out += _header(0, Entry("", 0), len(trailer)) + trailer
    out += _pad4(len(out))
    return bytes(out)


def board_initramfs(busybox, init, extra_binaries=None):
    """The QEMU boards' initramfs: busybox, our /init, and tools such as the EL probe in /bin."""
    entries = [directory(d) for d in ("bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "tmp")]
    entries += [char_device("dev/console", 5, 1), char_device("dev/null", 1, 3, 0o666),
                regular("bin/busybox", busybox), symlink("bin/sh", "busybox"), regular("init", init)]
    for name, data in sorted((extra_binaries or {}).items()):
        entries.append(regular(f"bin/{name}", data))
    return build_cpio(entries)
