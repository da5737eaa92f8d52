"""The firmware parser on real banners: Debian 12's u-boot-qemu and qemu-efi-aarch64 (captured from
this project's qemu-uboot and qemu-uefi runs), a vendor U-Boot with SPL, and U-Boot as a UEFI loader."""

from pkvmlab.facts.console import parse_boot_log
from pkvmlab.facts.firmware import find_firmware

UBOOT_QEMU = """\
U-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026 - 08:38:07 +0000)

DRAM:  2 GiB
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]
"""

EDK2_QEMU = """\
UEFI firmware (version  built at 13:10:49 on Nov  5 2024)
[    0.000000] Booting Linux on physical CPU 0x0000000000 [0x000f0510]
[    0.000000] efi: EFI v2.7 by EDK II
"""

# The shape of a TI K3 / Rockchip boot (SPL then U-Boot proper), then U-Boot's own EFI loader.
SPL_THEN_PROPER = """\
U-Boot SPL 2024.04-ti-g1ad0e9c4 (Jun 10 2024 - 11:00:00 +0000)
U-Boot 2024.04-ti-g1ad0e9c4 (Jun 10 2024 - 11:00:00 +0000)
[    0.000000] efi: EFI v2.10 by Das U-Boot
"""


def test_uboot_banner_gives_name_version_and_date():
    fw = find_firmware(UBOOT_QEMU.splitlines())
    assert (fw.name, fw.version) == ("U-Boot", "2023.01+dfsg-2+deb12u3")
    assert fw.describe() == "U-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026 - 08:38:07 +0000)"


def test_edk2_banner_and_linux_efi_line_give_vendor_and_revision():
    facts = parse_boot_log(EDK2_QEMU)
    fw = facts.firmware
    assert (fw.name, fw.vendor, fw.uefi_revision, fw.version) == ("UEFI", "EDK II", "2.7", None)
    assert fw.describe() == "EDK II (UEFI 2.7) built Nov 5 2024 13:10:49"
    assert fw.evidence[1] == "efi: EFI v2.7 by EDK II"


def test_uboot_proper_wins_over_spl_and_its_efi_loader():
    fw = find_firmware(SPL_THEN_PROPER.splitlines())
    assert (fw.name, fw.version) == ("U-Boot", "2024.04-ti-g1ad0e9c4")
    assert fw.evidence == ("U-Boot 2024.04-ti-g1ad0e9c4 (Jun 10 2024 - 11:00:00 +0000)",)


def test_direct_kernel_boot_shows_no_firmware():
    fw = parse_boot_log("[    0.000000] Booting Linux on physical CPU 0x0\n[    0.000000] Linux version 7.3\n").firmware
    assert fw.name is None and fw.describe() == "none seen on the console"
