"""Fake Pixel images for the Pixel simulator (simulator fixtures, not bootable anywhere).

Each image has the real container's magic and header layout (an Android boot
image v4 header for ``boot``/``init_boot``, ``VNDRBOOT`` for vendor boot images,
the DT-table magic for ``dtbo``, a zip for the APEX) so code that checks
magics sees what it would see on a real build.  The "kernel" inside a fake
boot image is a few lines of text the simulator reads to decide what the
booted kernel prints (release, KVM mode).  A real boot.img has no such text;
the simulator then boots its stock kernel.
"""

import io
import json
import struct
import zipfile

BOOT_MAGIC = b"ANDROID!"
VENDOR_BOOT_MAGIC = b"VNDRBOOT"
DTBO_MAGIC = struct.pack(">I", 0xD7B7AB1E)
ZIP_MAGIC = b"PK\x03\x04"
SIM_KERNEL_MARK = b"PKVMLAB-SIM-KERNEL\n"
# In every fixture image, near its start: AndroidStrategy refuses to send an image carrying it to a device
# reached with real tools (pkvmlab/lab/androidstrategy.py SIM_FIXTURE_MARK).
FIXTURE_MARK = b"pkvmlab simulator fixture"
EROFS_MAGIC = struct.pack("<I", 0xE0F5E1E2)     # at offset 1024 (linux fs/erofs/erofs_fs.h EROFS_SUPER_MAGIC_V1)
PAGE = 4096


def _pad(data, size=PAGE):
    return data + b"\0" * (-len(data) % size)


def sim_kernel_payload(release, kvm_mode="protected-nvhe", cmdline=""):
    lines = [f"release={release}", f"kvm={kvm_mode}", f"cmdline={cmdline}", f"note={FIXTURE_MARK.decode()}"]
    return SIM_KERNEL_MARK + ("\n".join(lines) + "\n").encode()


def boot_image(kernel=b"", ramdisk=b"", cmdline=""):
    """An Android boot image, header v4 (magic, sizes, os_version, header_size, reserved, version, cmdline)."""
    header = BOOT_MAGIC + struct.pack("<4I", len(kernel), len(ramdisk), 0, 1584) + b"\0" * 16
    header += struct.pack("<I", 4) + cmdline.encode().ljust(1536, b"\0") + struct.pack("<I", 0)
    return _pad(header) + _pad(kernel) + _pad(ramdisk)


def sim_boot_image(release, kvm_mode="protected-nvhe", cmdline=""):
    return boot_image(kernel=sim_kernel_payload(release, kvm_mode, cmdline), cmdline=cmdline)


def vendor_boot_image(name="vendor_boot"):
    header = VENDOR_BOOT_MAGIC + struct.pack("<I", 4) + f"pkvmlab simulator fixture: {name}".encode()
    return _pad(header)


def dtbo_image():
    # struct dt_table_header: magic, total_size, header_size, dt_entry_size, dt_entry_count, ... (big endian)
    header = DTBO_MAGIC + struct.pack(">7I", PAGE, 32, 32, 0, 32, PAGE, 0)
    return _pad(header + b"pkvmlab simulator fixture: dtbo")


def dlkm_image(name):
    """A module partition (vendor_dlkm, system_dlkm) as an EROFS file system would start: superblock magic at 1024."""
    return _pad(FIXTURE_MARK + f": {name}".encode() + b"\0" * (1024 - len(FIXTURE_MARK) - len(name) - 2)
                + EROFS_MAGIC)


def apex(name="com.android.virt", version=1, microdroid_release="6.1.99-microdroid-pkvmlab-sim"):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        # A fixed time stamp keeps the bytes (and so the sha256) the same every time.
        for member, content in (
                ("apex_manifest.json", {"name": name, "version": version}),
                ("pkvmlab-sim.json",
                 {"fixture": FIXTURE_MARK.decode(), "microdroid_kernel_release": microdroid_release})):
            archive.writestr(zipfile.ZipInfo(member, date_time=(2024, 1, 1, 0, 0, 0)), json.dumps(content))
    return buffer.getvalue()


def parse_sim_kernel(image):
    """(release, kvm_mode, cmdline) from a fake boot image, or None for anything else (a real kernel)."""
    if not image.startswith(BOOT_MAGIC) or len(image) < 2 * PAGE:
        return None
    kernel_size = struct.unpack_from("<I", image, 8)[0]
    kernel = image[PAGE:PAGE + kernel_size]
    if not kernel.startswith(SIM_KERNEL_MARK):
        return None
    values = dict(line.split("=", 1) for line in kernel[len(SIM_KERNEL_MARK):].decode().splitlines() if "=" in line)
    return values.get("release"), values.get("kvm", "protected-nvhe"), values.get("cmdline", "")


def boot_image_cmdline(image):
    # v3/v4 header: magic[8], kernel/ramdisk size, os_version, header_size, reserved[4], header_version, cmdline
    if not image.startswith(BOOT_MAGIC) or len(image) < 44 + 1536:
        return ""
    return image[44:44 + 1536].split(b"\0", 1)[0].decode(errors="replace")


def pixel_image_set(release="6.1.99-android14-11-pkvmlab-sim", kvm_mode="protected-nvhe"):
    """File name -> bytes of the example image set (boot, vendor_kernel_boot, dtbo, AVF APEX)."""
    return {
        "boot.img": sim_boot_image(release, kvm_mode),
        "vendor_kernel_boot.img": vendor_boot_image("vendor_kernel_boot"),
        "dtbo.img": dtbo_image(),
        "vendor_dlkm.img": dlkm_image("vendor_dlkm"),
        "system_dlkm.img": dlkm_image("system_dlkm"),
        "com.android.virt.apex": apex(),
    }


IMAGE_SET_KEYS = {"boot.img": "boot", "vendor_kernel_boot.img": "vendor_kernel_boot", "dtbo.img": "dtbo",
                  "vendor_dlkm.img": "vendor_dlkm", "system_dlkm.img": "system_dlkm",
                  "com.android.virt.apex": "com.android.virt"}


def write_pixel_image_set(directory, **kwargs):
    """Write the example set into ``directory``; returns {key: (file name, sha256)} for a manifest."""
    import hashlib
    from pathlib import Path
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in pixel_image_set(**kwargs).items():
        (directory / name).write_bytes(data)
        written[IMAGE_SET_KEYS[name]] = (name, hashlib.sha256(data).hexdigest())
    return written
