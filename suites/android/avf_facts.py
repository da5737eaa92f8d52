"""Parsers for what Android's virtualization tools print (no I/O; the suites next to this file run them).

Texts per AOSP packages/modules/Virtualization (https://android.googlesource.com/platform/packages/modules/Virtualization/),
``vm/src/main.rs`` and docs/getting_started.md: the ``vm`` tool's ``info`` lines, its
per-version flags (Android 13 ``--cpus``, Android 15 ``--cpu-topology``), the
run-microdroid progress lines, and the console markers of a protected boot.
"""

import re
from dataclasses import dataclass, field

VM = "/apex/com.android.virt/bin/vm"
CROSVM = "/apex/com.android.virt/bin/crosvm"
MICRODROID_KERNEL = "/apex/com.android.virt/etc/fs/microdroid_kernel"   # etc/fs/, not etc/
# The initrds the Microdroid kernel's vbmeta describes (initrd_normal, initrd_debug; apex/sign_virt_apex.py):
# pvmfw refuses that kernel without one of them (pvmfw/avb/src/verify.rs verify_payload()).
MICRODROID_INITRD = {"none": "/apex/com.android.virt/etc/microdroid_initrd_normal.img",
                     "full": "/apex/com.android.virt/etc/microdroid_initrd_debuggable.img"}
WORK_DIR = "/data/local/tmp/pkvmlab"

# KVM vendor hypervisor services (function numbers = bits of word 0 of 'smccc: KVM: hypervisor services
# detected'): upstream Documentation/virt/kvm/arm/hypercalls.rst and include/linux/arm-smccc.h; 5-8 are
# Android's MMIO guard calls (AVF pvmfw/README.md), where upstream has MMIO_GUARD at 7.
KVM_SERVICES = {0: "FEATURES", 1: "PTP", 2: "HYP_MEMINFO", 3: "MEM_SHARE", 4: "MEM_UNSHARE",
                5: "MMIO_GUARD_INFO", 6: "MMIO_GUARD_ENROLL", 7: "MMIO_GUARD_MAP", 8: "MMIO_GUARD_UNMAP"}
PKVM_GUEST_SERVICES = ("HYP_MEMINFO", "MEM_SHARE", "MEM_UNSHARE")

_TRUE = {"1", "y", "yes", "on", "true"}
_FALSE = {"0", "n", "no", "off", "false"}


def android_bool(value):
    """An Android boolean property: True, False, or None when unset/unparseable."""
    value = (value or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


@dataclass
class VmInfo:
    protected: bool = None
    non_protected: bool = None
    hypervisor_version: str = None
    dev_kvm: bool = False
    lines: list = field(default_factory=list)


_SUPPORT = (
    (re.compile(r"Both protected and (non-protected|unprotected) VMs are supported"), (True, True)),
    (re.compile(r"Only protected VMs are supported"), (True, False)),
    (re.compile(r"Only (non-protected|unprotected) VMs are supported"), (False, True)),
    (re.compile(r"VMs are not supported"), (False, False)),
)


def parse_vm_info(lines):
    info = VmInfo(lines=list(lines))
    for line in lines:
        line = line.strip()
        for pattern, (protected, plain) in _SUPPORT:
            if pattern.search(line):
                info.protected, info.non_protected = protected, plain
                break
        if line.startswith("Hypervisor version:"):
            info.hypervisor_version = line.split(":", 1)[1].strip()
        if line == "/dev/kvm exists.":
            info.dev_kvm = True
    return info


def vm_cpu_args(help_lines):
    """The flags giving a VM one vCPU on this Android: A15+ ``--cpu-topology one_cpu``, A13 ``--cpus 1``."""
    text = "\n".join(help_lines)
    if re.search(r"--cpu-topology\b", text):
        return "--cpu-topology one_cpu"
    if re.search(r"--cpus\b", text):
        return "--cpus 1"
    return ""


def parse_vm_subcommands(help_lines):
    """The subcommands ``vm --help`` lists (clap: indented names under 'Commands:' or 'SUBCOMMANDS:')."""
    names, inside = [], False
    for line in help_lines:
        if re.match(r"^(Commands|SUBCOMMANDS):\s*$", line.strip()):
            inside = True
            continue
        if inside:
            match = re.match(r"^\s{2,}([a-z][a-z0-9-]*)\b", line)
            if not match:
                if line.strip():
                    inside = False
                continue
            if match.group(1) != "help":
                names.append(match.group(1))
    return names


def parse_vm_list(lines):
    """CIDs in ``vm list`` output (Rust's debug dump of VirtualMachineDebugInfo; vm/vm_shell.sh reads 'cid')."""
    return [int(cid) for cid in re.findall(r"\bcid: (\d+)", "\n".join(lines))]


def kvm_services(bitmap):
    """Names of the services set in a 'hypervisor services detected' word (hex string)."""
    value = int(bitmap, 16)
    return [KVM_SERVICES.get(bit, f"bit{bit}") for bit in range(32) if value >> bit & 1]


@dataclass
class VmRun:
    cid: int = None
    debuggable: bool = None
    started_at: float = None      # seconds after launch when 'Created ... state is STARTING.' arrived
    payload_started_at: float = None
    payload_ready_at: float = None
    payload_exit: int = None
    ended: str = None
    errors: list = field(default_factory=list)


_CREATED = re.compile(r"Created (debuggable VM|VM) from .* with CID (\d+), state is STARTING\.")


def parse_vm_run(timed_lines):
    """A run-* invocation from [(seconds, stream, text)] lines."""
    run = VmRun()
    for seconds, _, text in timed_lines:
        text = text.strip()
        created = _CREATED.search(text)
        if created:
            run.debuggable = created.group(1) == "debuggable VM"
            run.cid = int(created.group(2))
            run.started_at = seconds
        elif text == "payload started":
            run.payload_started_at = seconds
        elif text == "payload is ready":
            run.payload_ready_at = seconds
        elif text.startswith("payload finished with exit code"):
            run.payload_exit = int(text.rsplit(" ", 1)[1])
        elif text.startswith("VM ended:"):
            run.ended = text.split(":", 1)[1].strip()
        elif text.startswith(("VM encountered an error", "Error:")):
            run.errors.append(text)
    return run


@dataclass
class GuestConsole:
    pvmfw: bool = False            # '[INFO] pVM firmware': the protected VM firmware ran
    payload_handoff: bool = False  # '[INFO] Starting payload...': pvmfw verified and started the guest
    kernel_release: str = None
    guest_el: str = None
    hyp_services: str = None       # 'smccc: KVM: hypervisor services detected (...)'
    restricted_dma: bool = False   # swiotlb bounce pool of a pVM
    pvmfw_failure: str = None      # pvmfw refused the payload or found no instance.img

    @property
    def services(self):
        """Service names of the detected bitmap's word 0 (the kernel prints words 3, 2, 1, 0)."""
        return kvm_services(self.hyp_services.split()[-1]) if self.hyp_services else []


def parse_guest_console(text):
    console = GuestConsole()
    for line in text.splitlines():
        if "pVM firmware" in line:
            console.pvmfw = True
        if "Starting payload..." in line:
            console.payload_handoff = True
        if "Failed to verify the payload" in line or "instance.img" in line and "[ERROR]" in line:
            console.pvmfw_failure = console.pvmfw_failure or line.strip()
        match = re.search(r"Linux version (\S+)", line)
        if match and console.kernel_release is None:
            console.kernel_release = match.group(1)
        match = re.search(r"CPU: All CPU\(s\) started at (EL[0-3])", line)
        if match:
            console.guest_el = match.group(1)
        match = re.search(r"smccc: KVM: hypervisor services detected \(([^)]*)\)", line)
        if match:
            console.hyp_services = match.group(1)
        if "restricted DMA pool" in line or "restricted-dma-pool" in line:
            console.restricted_dma = True
    return console
