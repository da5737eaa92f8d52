"""What a simulated protected VM prints: pvmfw's payload checks and the guest kernel's console lines.

Part of the pkvmlab Pixel SIMULATOR (see pixel.py): nothing here runs a VM.
pvmfw is the protected VM's firmware; before it hands over to the guest it
verifies what the host passed, and the simulator enforces the same rules, so a
launch the simulator accepts is one pvmfw would accept (AOSP
packages/modules/Virtualization, read at LineageOS/android_packages_modules_Virtualization):

- ``pvmfw/avb/src/verify.rs`` ``verify_payload()`` (commit f4bf7cab): the kernel
  must carry a vbmeta signed with the trusted key.  Without an initrd the
  vbmeta must hold exactly one hash descriptor (the kernel's); Microdroid's
  kernel holds three (kernel, initrd_normal, initrd_debug), so Microdroid's
  kernel with no initrd is refused.  With an initrd it must be the one
  ``initrd_normal`` or ``initrd_debug`` describes (DebugLevel None or Full).
- ``pvmfw/src/instance.rs`` ``find_instance_img()`` (commit 0d9322aa): a virtio-blk
  disk must hold a GPT partition named ``vm-instance`` whose first block starts
  with ``Android-VM-instance`` and version 1 (``Header::is_valid``); otherwise
  "Failed to find the instance.img partition" / "instance.img header is invalid".

Console lines: ``[INFO] pVM firmware`` and ``[INFO] Starting payload...``
(AVF docs/getting_started.md, MicrodroidHostTests) and the guest kernel lines of
Linux's arch/arm64/kvm (the KVM init lines); the exact wording of pvmfw's error lines is the
Display text of the errors above behind a plausible prefix [U].
"""

import struct
from pathlib import Path

# The fake APEX's files (device.sync_root writes them) and what the simulated vbmeta of the kernel describes.
MICRODROID_KERNEL_TEXT = "pkvmlab simulator fixture: microdroid kernel, vbmeta: kernel initrd_normal initrd_debug\n"
INITRD_TEXT = {"initrd_normal": "pkvmlab simulator fixture: microdroid initrd (normal)\n",
               "initrd_debug": "pkvmlab simulator fixture: microdroid initrd (debuggable)\n"}
INSTANCE_MAGIC = b"Android-VM-instance"
GPT_SIGNATURE = b"EFI PART"
LBA = 512


class PvmfwRefusal(Exception):
    """pvmfw refused the payload; the message is its console line."""


def _read(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def verify_payload(kernel, initrd):
    """The debug level pvmfw gives the VM ('none' or 'full'), or PvmfwRefusal with pvmfw's line."""
    text = _read(kernel) or ""
    if not text.startswith(MICRODROID_KERNEL_TEXT.split(",")[0]):
        raise PvmfwRefusal("[ERROR] Failed to verify the payload: Verification error (the kernel carries no vbmeta "
                           "signed with the trusted key)")
    descriptors = text.split("vbmeta:", 1)[1].split()
    if initrd is None:
        if len(descriptors) != 1:
            raise PvmfwRefusal(f"[ERROR] Failed to verify the payload: Invalid metadata (no initrd given, but the "
                               f"kernel's vbmeta has {len(descriptors)} hash descriptors: {', '.join(descriptors)})")
        return "none"
    given = _read(initrd)
    for name, level in (("initrd_normal", "none"), ("initrd_debug", "full")):
        if name in descriptors and given == INITRD_TEXT[name]:
            return level
    raise PvmfwRefusal("[ERROR] Failed to verify the payload: Verification error (the initrd matches neither "
                       "initrd_normal nor initrd_debug of the kernel's vbmeta)")


def gpt_partitions(path):
    """{name: (first byte, last byte + 1)} of a GPT disk image (primary header at LBA 1), or {} if none."""
    try:
        with open(path, "rb") as disk:
            header = disk.read(2 * LBA)[LBA:]
            if header[:8] != GPT_SIGNATURE:
                return {}
            entries_lba, count, size = struct.unpack_from("<QII", header, 72)
            disk.seek(entries_lba * LBA)
            table = disk.read(count * size)
    except OSError:
        return {}
    found = {}
    for index in range(count):
        entry = table[index * size:(index + 1) * size]
        if len(entry) < 128 or entry[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        found[name] = (first * LBA, (last + 1) * LBA)
    return found


def check_instance_image(disks):
    """pvmfw's search for the instance.img among the VM's writable disks; PvmfwRefusal when it fails."""
    for path in disks:
        span = gpt_partitions(path).get("vm-instance")
        if span is None:
            continue
        with open(path, "rb") as disk:
            disk.seek(span[0])
            block = disk.read(LBA)
        magic, version = block[:len(INSTANCE_MAGIC)], block[len(INSTANCE_MAGIC):len(INSTANCE_MAGIC) + 2]
        if magic != INSTANCE_MAGIC or struct.unpack("<H", version or b"\0\0")[0] != 1:
            raise PvmfwRefusal("[ERROR] Failed to get instance.img salt: instance.img header is invalid")
        return path
    raise PvmfwRefusal("[ERROR] Failed to get instance.img salt: Failed to find the instance.img partition")


# The pKVM guest services a protected guest sees (smccc KVM vendor services bitmap, word 0): FEATURES (0),
# HYP_MEMINFO (2), MEM_SHARE (3), MEM_UNSHARE (4), and Android's MMIO guard calls (5-8, pvmfw/README.md).
PROTECTED_SERVICES = "0x000001fd"
PLAIN_SERVICES = "0x00000003"      # FEATURES, PTP


def guest_kernel_lines(release, protected, ending=None):
    """(seconds, text) of the guest kernel's console: a Microdroid that runs on (``ending`` None), or one
    that stops: 'no-root' (no initrd, no disk: the VFS panic) or 'initrd' (Microdroid's first-stage init
    finds none of its disks and reboots)."""
    services = PROTECTED_SERVICES if protected else PLAIN_SERVICES
    lines = [(0.0, "Booting Linux on physical CPU 0x0000000000 [0x410fd083]"),
             (0.0, f"Linux version {release} (pkvmlab-sim@sim) #1 SMP PREEMPT"),
             (0.0, "Machine model: linux,dummy-virt")]
    if protected:
        lines += [(0.0, "OF: reserved mem: initialized node restricted_dma_reserved, compatible id "
                        "restricted-dma-pool"),
                  (0.0, "software IO TLB: Reserved memory: created restricted DMA pool at 0x0000000080000000, "
                        "size 12 MiB")]
    lines += [(0.0, f"smccc: KVM: hypervisor services detected (0x00000000 0x00000000 0x00000000 {services})"),
              (0.412337, "CPU: All CPU(s) started at EL1")]
    if ending == "initrd":
        lines += [(0.498120, "Run /init as init process"),
                  (0.611004, "init: [libfs_mgr] Failed to mount required partitions early ..."),
                  (0.611990, "init: InitFatalReboot: signal 6"),
                  (0.612431, "reboot: Restarting system with command 'bootloader'")]
    elif ending == "no-root":
        lines += [(0.530117, "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"),
                  (0.530201, "Rebooting in 1 seconds..")]
    return lines
