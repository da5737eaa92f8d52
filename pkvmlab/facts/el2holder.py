"""Who holds EL2 when Linux did not get it: a firmware hypervisor's signatures on the console.

A board whose kernel boots at EL1 is either a board without EL2 at all or one
whose firmware keeps it (Qualcomm's Gunyah / QHEE on Snapdragon, MediaTek's
GenieZone).  The kernel's own lines (``CPU: All CPU(s) started at EL1``,
``kvm [1]: HYP mode not available``) read the same in both cases; the
firmware's banner and its reserved-memory and driver lines tell them apart.
Pure: text in, fact out.  Signatures and their public sources:

- Gunyah boot banner ``Hypervisor cold boot, version: gunyah-...`` and
  reserved-memory nodes ``gunyah_hyp_region``, ``gunyah-md-region``
  (qualcomm-linux/kernel PR triage threads #1075, #1083, #1085 on GitHub);
  ``gunyah-hyp@80000000`` (upstream ``arch/arm64/boot/dts/qcom/hamoa.dtsi``,
  ``eliza.dtsi``); driver lines ``misc gunyah: ...``, ``gunyah_rsc_mgr ...`` and
  crosvm's ``creating hypervisor: Gunyah`` (polygraphene/gunyah-on-sd-guide README.md).
- Android's ``ro.boot.hypervisor.version=gunyah`` / ``/sys/hypervisor/type`` = gunyah
  (same threads; unconfirmed on every device).
- Qualcomm's QHEE (Qualcomm Hypervisor Execution Environment), the EL2 image of
  Snapdragon generations before Gunyah: prints nothing itself, but the XBL loader
  logs loading it on the debug UART before ABL runs, as ``QHEE Image Loaded, Delta -
  (<n> Bytes)`` (``QHEE_BOOT_LOG_STR`` in Qualcomm's XBL loader ``sbl1_config.c``,
  ``QcomPkg/.../XBLLoaderLib``, as published in the CodeAurora ``boot_images``
  releases; the line appears in public XBL UART logs of SM8250-family devices).
  Later XBLs load Gunyah from the same ``hyp`` partition and may log the same
  line, so a Gunyah signature anywhere in the log wins over it: QHEE is named only
  when nothing more specific is seen.
- MediaTek GenieZone: the name ``GenieZone`` / ``geniezone`` / ``gzvm`` in driver
  and reserved-memory lines (upstream review of the MediaTek "gzvm" driver on
  lore.kernel.org, 2023-2024; unconfirmed per device: treat as a hint).
"""

import re
from dataclasses import dataclass

SIGNATURES = (
    ("Gunyah", re.compile(r"Hypervisor cold boot, version: gunyah", re.I)),
    ("Gunyah", re.compile(r"gunyah[-_](?:hyp|md)[-_@]|gunyah_hyp_region|gunyah_rsc_mgr|misc gunyah:", re.I)),
    # ``name=value`` (bootconfig, build.prop) or getprop's own ``[name]: [value]``
    ("Gunyah", re.compile(r"ro\.boot\.hypervisor\.version\]?\s*[=:]\s*\[?gunyah", re.I)),
    ("Gunyah", re.compile(r"creating hypervisor: Gunyah")),
    # Driver, device and reserved-memory names only: a bare "geniezone" (a kernel release, a path)
    # is no evidence.
    ("GenieZone", re.compile(r"\bgzvm\b|reserved mem: .*\bgeniezone|GenieZone hypervisor|"
                             r"ro\.boot\.hypervisor\.version\]?\s*[=:]\s*\[?geniezone", re.I)),
    ("QHEE", re.compile(r"\bQHEE Image Loaded\b")),
)
# A signature of a more specific holder anywhere in the log wins over these (see QHEE above).
GENERIC = ("QHEE",)


@dataclass(frozen=True)
class El2Holder:
    name: str = None          # "Gunyah", "GenieZone", "QHEE", or None: no firmware hypervisor seen
    evidence: str = None      # the console line it was read from
    line_number: int = None

    def describe(self):
        if self.name is None:
            return "no EL2 (no firmware hypervisor seen)"
        return f"EL2 held by {self.name} (evidence: {self.evidence})"


def find_el2_holder(lines):
    """The first firmware-hypervisor signature among ``lines`` (cleaned console lines), numbered from 1.

    A generic signature (QHEE's loader line) counts only when no specific one is seen.
    """
    generic = None
    for number, line in enumerate(lines, start=1):
        for name, regex in SIGNATURES:
            if regex.search(line):
                if name not in GENERIC:
                    return El2Holder(name, line.strip(), number)
                generic = generic or El2Holder(name, line.strip(), number)
    return generic or El2Holder()
