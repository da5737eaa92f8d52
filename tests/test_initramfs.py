"""The cpio newc writer: read the archive back and check every header field we rely on."""

import stat

from pkvmlab.images.initramfs import board_initramfs, build_cpio, char_device, directory, regular


def read_newc(data):
    """A minimal newc reader for the test (the kernel's own unpacker is the other reader)."""
    entries, offset = {}, 0
    while True:
        assert data[offset:offset + 6] == b"070701", f"bad magic at {offset}"
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_start = offset + 110
        name = data[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        body = data[data_start:data_start + size]
        offset = data_start + size + (-size % 4)
        if name == "TRAILER!!!":
            return entries, offset
        entries[name] = (mode, body, (rmaj, rmin))


def test_round_trip_and_alignment():
    data = build_cpio([directory("bin"), regular("bin/x", b"abc"), char_device("dev/console", 5, 1),
                       directory("dev")])
    entries, end = read_newc(data)
    assert end == len(data) and len(data) % 4 == 0
    assert entries["bin/x"][1] == b"abc" and stat.S_ISREG(entries["bin/x"][0])
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert list(entries) == ["bin", "bin/x", "dev", "dev/console"]   # parents first


def test_board_initramfs_is_deterministic_and_complete():
    first = board_initramfs(b"BUSYBOX", b"#!/bin/sh\n", {"elprobe": b"\x7fELF"})
    assert first == board_initramfs(b"BUSYBOX", b"#!/bin/sh\n", {"elprobe": b"\x7fELF"})
    entries, _ = read_newc(first)
    assert entries["init"][1] == b"#!/bin/sh\n" and entries["init"][0] & 0o111
    assert entries["bin/elprobe"][1] == b"\x7fELF"
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    assert "dev/console" in entries
