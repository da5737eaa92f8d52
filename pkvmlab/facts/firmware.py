"""Which firmware booted the kernel, and its version, read from the console.

Pure: cleaned console lines in, a fact out.  The banners and where they come from:

- U-Boot prints ``U-Boot <version> (<build date>)`` when U-Boot proper starts, and
  ``U-Boot SPL <version> ...`` from its first stage (``common/board_f.c``,
  ``display_options()`` / ``version_string`` in u-boot/u-boot on GitHub); the SPL
  line is kept only when U-Boot proper printed none.
- EDK II's ArmVirtQemu prints ``UEFI firmware (version <FirmwareVersionString> built at
  <time> on <date>)`` on the serial port (``ArmVirtPkg/PrePi`` and ``PlatformCI`` in
  tianocore/edk2; Debian's build leaves the version string empty).
- Linux's EFI stub then says ``efi: EFI v<revision> by <vendor>`` (``drivers/firmware/efi/efi.c``,
  ``efi_systab_report_header``), which names the vendor and the UEFI revision any UEFI
  firmware implements, EDK II or not.
"""

import re
from dataclasses import dataclass

UBOOT = re.compile(r"^U-Boot (?!SPL )(\S+) \(([^)]*)\)")
UBOOT_SPL = re.compile(r"^U-Boot SPL (\S+) \(([^)]*)\)")
EDK2 = re.compile(r"UEFI firmware \(version ?(.*?) built at (.+?)\)")
EFI_LINUX = re.compile(r"\befi: EFI v(\S+) by (.+)$")


@dataclass(frozen=True)
class Firmware:
    name: str = None         # "U-Boot", "UEFI" (with the vendor in ``vendor``), or None: none seen
    version: str = None      # U-Boot's version, EDK II's version string, else None
    vendor: str = None       # UEFI vendor per Linux ("EDK II"), or None
    uefi_revision: str = None
    built: str = None        # the build date the banner gives
    evidence: tuple = ()     # the console lines it was read from

    def describe(self):
        """One line for a property or a report: "U-Boot 2023.01+dfsg-2+deb12u3 (Jun 22 2026 ...)"."""
        if self.name is None:
            return "none seen on the console"
        if self.name == "U-Boot":
            return f"U-Boot {self.version}" + (f" ({self.built})" if self.built else "")
        parts = [self.vendor or "UEFI"]
        if self.version:
            parts.append(self.version)
        if self.uefi_revision:
            parts.append(f"(UEFI {self.uefi_revision})")
        if self.built:
            parts.append(f"built {self.built}")
        return " ".join(parts)


def find_firmware(lines):
    """The firmware that ``lines`` (cleaned console lines) show booting the kernel."""
    uboot = spl = edk2 = efi = None
    for line in lines:
        text = line.strip()
        if uboot is None and (match := UBOOT.match(text)):
            uboot = (match, text)
        elif spl is None and (match := UBOOT_SPL.match(text)):
            spl = (match, text)
        elif edk2 is None and (match := EDK2.search(text)):
            edk2 = (match, text)
        elif efi is None and (match := EFI_LINUX.search(text)):
            efi = (match, text)
    chosen = uboot or spl
    if chosen is not None and edk2 is None:
        match, text = chosen
        return Firmware("U-Boot", match.group(1), built=match.group(2), evidence=(text,))
    if edk2 is not None or efi is not None:
        version = edk2[0].group(1).strip() or None if edk2 else None
        built = " ".join(" ".join(edk2[0].group(2).split(" on ", 1)[::-1]).split()) if edk2 else None
        return Firmware("UEFI", version, vendor=efi[0].group(2).strip() if efi else None,
                        uefi_revision=efi[0].group(1) if efi else None, built=built,
                        evidence=tuple(found[1] for found in (edk2, efi) if found))
    return Firmware()
