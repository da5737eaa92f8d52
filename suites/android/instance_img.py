"""The instance image a protected VM's pvmfw looks for, built on the host (bytes only, no I/O).

pvmfw searches the VM's virtio-blk disks for a GPT partition named ``vm-instance``
whose first block is the header ``Android-VM-instance`` + version 1 (u16, little
endian), and stores its DICE data in the blocks after it (AOSP
packages/modules/Virtualization ``pvmfw/src/instance.rs``: ``find_instance_img()``,
``Header::is_valid()``; the header is what ``virtualizationservice``'s
``format_as_android_vm_instance()`` writes).  AVF hands pvmfw such a disk (a
composite disk holding instance.img); a raw crosvm run needs its own.  Android
has no GPT tool on the device, so the harness builds the disk here and pushes it.

GPT layout per the UEFI specification (chapter 5): protective MBR in LBA 0, header
in LBA 1 and a backup header in the last LBA, 128 entries of 128 bytes, CRC32 over
the header and the entry array.
"""

import struct
import uuid
import zlib

LBA = 512
ENTRIES, ENTRY_SIZE = 128, 128
ENTRY_LBAS = ENTRIES * ENTRY_SIZE // LBA            # 32
HEADER_MAGIC = b"Android-VM-instance" + struct.pack("<H", 1)
LINUX_DATA = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def _header(current, backup, first, last, entries_lba, disk_guid, entries_crc):
    fields = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x00010000, 92, 0, 0, current, backup, first, last,
                         disk_guid.bytes_le, entries_lba, ENTRIES, ENTRY_SIZE, entries_crc)
    crc = zlib.crc32(fields)
    return (fields[:16] + struct.pack("<I", crc) + fields[20:]).ljust(LBA, b"\0")


def instance_disk(size=1 << 20, partition_blocks=256, seed="pkvmlab"):
    """A GPT disk image of ``size`` bytes with one ``vm-instance`` partition holding a fresh instance header."""
    total = size // LBA
    first = 2 + ENTRY_LBAS                             # 34
    last = first + partition_blocks - 1
    if last > total - 2 - ENTRY_LBAS:
        raise ValueError(f"a {partition_blocks}-block partition does not fit a {size}-byte disk")
    disk_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:disk")
    part_guid = uuid.uuid5(uuid.NAMESPACE_URL, f"{seed}:vm-instance")
    entry = struct.pack("<16s16sQQQ72s", LINUX_DATA.bytes_le, part_guid.bytes_le, first, last, 0,
                        "vm-instance".encode("utf-16-le"))
    entries = entry.ljust(ENTRIES * ENTRY_SIZE, b"\0")
    entries_crc = zlib.crc32(entries)
    usable_last = total - 2 - ENTRY_LBAS
    mbr = bytearray(LBA)
    mbr[446:462] = struct.pack("<BBBBBBBBII", 0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF, 1, min(total - 1, 0xFFFFFFFF))
    mbr[510:512] = b"\x55\xaa"
    disk = bytearray(size)
    disk[0:LBA] = mbr
    disk[LBA:2 * LBA] = _header(1, total - 1, first, usable_last, 2, disk_guid, entries_crc)
    disk[2 * LBA:first * LBA] = entries
    disk[first * LBA:first * LBA + len(HEADER_MAGIC)] = HEADER_MAGIC
    backup_entries = total - 1 - ENTRY_LBAS
    disk[backup_entries * LBA:(total - 1) * LBA] = entries
    disk[(total - 1) * LBA:] = _header(total - 1, 1, first, usable_last, backup_entries, disk_guid, entries_crc)
    return bytes(disk)
