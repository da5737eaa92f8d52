"""Boot facts from a kernel console log or dmesg.

The kernel states the truth about privilege levels at boot: which EL every CPU
started in (``arch/arm64/kernel/smp.c``), and which KVM mode initialised
(``arch/arm64/kvm/arm.c``).  This module turns that text into a
:class:`BootFacts`; it does no I/O, so it is tested on real logs captured from
runs (``tests/fixtures/console/``).
"""

import re
from dataclasses import dataclass, field

from .el2holder import El2Holder, find_el2_holder
from .firmware import Firmware, find_firmware

# "kvm [N]:" is kvm_info() with the PID; match any N.
_KVM = r"kvm \[\d+\]: "
# Order matters: the first pattern that matches a line decides the mode.
KVM_MODE_PATTERNS = (
    (re.compile(_KVM + r"Protected nVHE mode initialized successfully"), "protected-nvhe"),
    (re.compile(_KVM + r"Protected hVHE mode initialized successfully"), "protected-hvhe"),
    (re.compile(_KVM + r"Hyp nVHE mode initialized successfully"), "nvhe"),
    (re.compile(_KVM + r"Hyp hVHE mode initialized successfully"), "hvhe"),
    (re.compile(_KVM + r"Hyp mode initialized successfully"), "nvhe"),          # kernels before ~6.6
    (re.compile(_KVM + r"VHE(\+NV2)? mode initialized successfully"), "vhe"),
    (re.compile(_KVM + r"HYP mode not available"), "none"),
    (re.compile(_KVM + r"KVM disabled from command line"), "none"),
    (re.compile(r"KVM is not available\. Ignoring kvm-arm\.mode"), "none"),
)
_BOOT_EL = re.compile(r"CPU: All CPU\(s\) started at (EL[0-3])")
_MIXED_EL = re.compile(r"CPU: CPUs started in inconsistent modes")
_LINUX_VERSION = re.compile(r"Linux version (\S+)")
_CMDLINE = re.compile(r"Kernel command line: (.*)$")
_PKVM_FALLBACK = re.compile(r"Protected KVM not available with VHE")
_TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Lines that mean the kernel itself is in trouble, as (kind, regex).
PROBLEM_PATTERNS = (
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("oops", re.compile(r"Internal error: Oops|Unable to handle kernel")),
    ("bug", re.compile(r"\bBUG: |kernel BUG at")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+|\bWARNING: .* at ")),
    ("hyp-panic", re.compile(r"HYP panic|hyp_panic")),
    ("call-trace", re.compile(r"^Call trace:")),
)
# Known lines that look alarming but are the emulator's doing, each with why.
BENIGN_PATTERNS = (
    (re.compile(r"arch_timer: \[Firmware Bug\]: VHE-capable CPU without EL2 virtual timer interrupt"),
     "QEMU 7.2's virt board describes no EL2 virtual timer; the emulator's gap, not the kernel's"),
)


@dataclass(frozen=True)
class ConsoleProblem:
    kind: str
    line_number: int
    text: str


@dataclass
class BootFacts:
    kernel_release: str = None
    cmdline: str = None
    boot_el: str = None              # "EL1", "EL2", or "mixed"
    kvm_mode: str = None             # protected-nvhe, protected-hvhe, nvhe, hvhe, vhe, none
    kvm_line: str = None
    pkvm_fallback: bool = False      # asked for protected, kernel fell back to VHE
    problems: list = field(default_factory=list)
    benign: list = field(default_factory=list)
    evidence: dict = field(default_factory=dict)     # fact -> line number it was read from (1-based)
    el2_holder: El2Holder = field(default_factory=El2Holder)   # firmware hypervisor seen (facts/el2holder.py)
    firmware: Firmware = field(default_factory=Firmware)       # firmware that booted the kernel (facts/firmware.py)

    @property
    def el2_summary(self):
        """None when Linux got EL2; else who holds it, with the line that says so."""
        if self.boot_el == "EL2":
            return None
        return self.el2_holder.describe()

    @property
    def kvm_arm_mode(self):
        """What the command line asked for: protected, nvhe, nested, none, or default."""
        for word in (self.cmdline or "").split():
            if word.startswith("kvm-arm.mode="):
                return word.split("=", 1)[1]
        return "default"


def clean_line(line):
    """A console line without its dmesg timestamp, terminal escapes and CR."""
    return _TIMESTAMP.sub("", _ESCAPES.sub("", line)).rstrip("\r\n")


def parse_boot_log(text):
    """Parse a console log or dmesg text into BootFacts."""
    facts = BootFacts()
    cleaned = [clean_line(raw) for raw in text.splitlines()]
    facts.el2_holder = find_el2_holder(cleaned)
    facts.firmware = find_firmware(cleaned)
    if facts.el2_holder.name:
        facts.evidence["el2_holder"] = facts.el2_holder.line_number
    for number, line in enumerate(cleaned, start=1):
        if facts.kernel_release is None and (match := _LINUX_VERSION.search(line)):
            facts.kernel_release = match.group(1)
        if facts.cmdline is None and (match := _CMDLINE.search(line)):
            facts.cmdline = match.group(1).strip()
        if match := _BOOT_EL.search(line):
            facts.boot_el = match.group(1)
            facts.evidence["boot_el"] = number
        elif _MIXED_EL.search(line):
            facts.boot_el = "mixed"
            facts.evidence["boot_el"] = number
        if _PKVM_FALLBACK.search(line):
            facts.pkvm_fallback = True
        if facts.kvm_line is None or facts.kvm_mode == "none":
            for regex, mode in KVM_MODE_PATTERNS:
                if regex.search(line):
                    # "not available" lines come in pairs; a success line always wins, and of two
                    # "none" lines the kvm [N]: one (it says why: HYP mode not available).
                    better = mode != "none" or not (facts.kvm_line or "").startswith("kvm [")
                    if facts.kvm_mode is None or better:
                        facts.kvm_mode, facts.kvm_line = mode, line.strip()
                        facts.evidence["kvm_mode"] = number
                    break
        _classify_problem(facts, number, line)
    return facts


def _classify_problem(facts, number, line):
    for regex, why in BENIGN_PATTERNS:
        if regex.search(line):
            facts.benign.append((ConsoleProblem("benign", number, line.strip()), why))
            return
    for kind, regex in PROBLEM_PATTERNS:
        if regex.search(line):
            facts.problems.append(ConsoleProblem(kind, number, line.strip()))
            return


def tail(text, lines=30):
    """The last ``lines`` cleaned lines of a console log, for error messages."""
    return "\n".join(clean_line(line) for line in text.splitlines()[-lines:])


def excerpt(text, around=(), context=3, last=10):
    """Lines of a console log for a failure report: ``context`` lines either side of each line
    number in ``around`` (the lines a fact was read from) and the last ``last`` lines.

    Returns (lines, note); the note says which lines these are, since a check that
    judges a boot fact printed nothing while it ran and its evidence is far back.
    """
    lines = [line.rstrip("\r") for line in text.splitlines()]
    keep = set(range(max(0, len(lines) - last), len(lines)))
    for number in around:
        keep.update(range(max(0, number - 1 - context), min(len(lines), number + context)))
    out, previous = [], None
    for index in sorted(keep):
        if previous is not None and index != previous + 1:
            out.append("[...]")
        out.append(lines[index])
        previous = index
    shown = ", ".join(str(n) for n in sorted(around))
    note = (f"lines around {shown} (where the boot facts were read) and " if around else "") + \
        f"the last {min(last, len(lines))} of {len(lines)} lines"
    return out, note
