"""The pkvmlab Pixel SIMULATOR's ``/apex/com.android.virt/bin/crosvm run`` (see pixel.py).

Flags per google/crosvm ``src/crosvm/cmdline.rs``:
one protection mode at most ("Only one protection mode has to be specified");
``--protected-vm`` boots through the pvmfw the bootloader loaded and fails with
ENOENT when there is none; ``--protected-vm-without-firmware`` is crosvm's
explicit, experimental protected mode with no firmware (no pvmfw, so no payload
verification: the guest kernel starts directly).  Through pvmfw the payload is
checked as guest.py says (kernel + initrd + instance image), so a Microdroid
kernel passed without its initrd never prints a banner, as on a phone.
Disks: ``--block path=FILE[,ro=true]`` (or ``--block FILE``) and the deprecated
``--rwdisk FILE`` are writable, ``--disk FILE`` is read-only.
"""

import sys
from pathlib import Path

from . import guest as simguest
from .device import SimExit, kvm_up, load_state, microdroid_release, protected_kvm, sim_sleep
from .vmtool import parse_flags

_RUN_FLAGS = {"--protected-vm": 0, "--protected-vm-without-firmware": 0, "--protected-vm-with-firmware": 1,
              "--unprotected-vm-with-firmware": 1, "--disable-sandbox": 0, "--mem": 1, "--cpus": 1,
              "--params": 1, "-p": 1, "--serial": 1, "--cid": 1, "--swiotlb": 1,
              "--unmap-guest-memory-on-fork": 0, "--initrd": 1, "-i": 1, "--block": 1, "--disk": 1,
              "--rwdisk": 1, "--no-balloon": 0, "--socket": 1, "--hypervisor": 1}
MODES = ("--protected-vm", "--protected-vm-without-firmware", "--protected-vm-with-firmware",
         "--unprotected-vm-with-firmware")


def _writable_disks(values):
    disks = list(values.get("--rwdisk", []))
    for spec in values.get("--block", []):
        fields = dict(part.split("=", 1) if "=" in part else ("path", part) for part in spec.split(","))
        if fields.get("ro", "false") not in ("true", "1"):
            disks.append(fields.get("path", ""))
    return disks


def _console_path(values):
    for spec in values.get("--serial", []):
        fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
        if fields.get("type") == "file" and fields.get("path"):
            return fields["path"]
    return None


def tool_crosvm(devdir, args):
    state = load_state(devdir)
    args = list(args)
    while args and args[0].startswith("--") and args[0] != "run":
        flag = args.pop(0)
        if flag == "--log-level" and args:
            args.pop(0)
    if not args or args[0] != "run":
        raise SimExit(1, "pkvmlab-sim: only 'crosvm run' is simulated")
    values, positional = parse_flags(_RUN_FLAGS, args[1:], "crosvm run")
    modes = [flag for flag in MODES if flag in values]
    if len(modes) > 1:
        raise SimExit(1, "[ERROR] Only one protection mode has to be specified")
    if len(positional) != 1:
        raise SimExit(1, "[ERROR] expected one kernel path")
    if not state["adb_root"]:
        raise SimExit(1, "[ERROR] failed to open /dev/kvm: Permission denied (os error 13)")
    if not kvm_up(state):
        raise SimExit(1, "[ERROR] failed to open /dev/kvm: No such file or directory (os error 2)")
    kernel = positional[0]
    initrd = (values.get("--initrd") or values.get("-i") or [None])[-1]
    for path in [kernel, *([initrd] if initrd else []), *_writable_disks(values), *values.get("--disk", [])]:
        if not Path(path).is_file():
            raise SimExit(1, f"[ERROR] failed to open {path}: No such file or directory (os error 2)")
    protected = bool(modes) and modes[0] != "--unprotected-vm-with-firmware"
    if protected and not protected_kvm(state):
        raise SimExit(1, "[ERROR] failed to create VM: Invalid argument (os error 22)")
    if "--protected-vm" in values and not state.get("pvmfw_loaded", True):
        raise SimExit(1, "[ERROR] failed to enable protected VM: No such file or directory (os error 2)")
    firmware = bool(modes) and modes[0] in ("--protected-vm", "--protected-vm-with-firmware")
    serial_path = _console_path(values)
    out = open(serial_path, "w") if serial_path else sys.stdout   # noqa: SIM115 - closed below
    print("[INFO:src/crosvm/sys/linux.rs] crosvm started (pkvmlab simulator)", file=sys.stderr, flush=True)
    try:
        if firmware:
            print("[INFO] pVM firmware", file=out, flush=True)
            try:
                simguest.verify_payload(kernel, initrd)
                simguest.check_instance_image(_writable_disks(values))
            except simguest.PvmfwRefusal as refusal:
                print(str(refusal), file=out, flush=True)
                print("[INFO:src/crosvm/sys/linux.rs] guest reset requested, exiting (pkvmlab simulator)",
                      file=sys.stderr)
                return 0
            print("[INFO] Starting payload...", file=out, flush=True)
        ending = "initrd" if initrd else "no-root"
        for stamp, text in simguest.guest_kernel_lines(microdroid_release(state), protected, ending):
            print(f"[{stamp:12.6f}] {text}", file=out, flush=True)
        sim_sleep(0.3)
    finally:
        if out is not sys.stdout:
            out.close()
    print("[INFO:src/crosvm/sys/linux.rs] guest reset requested, exiting (pkvmlab simulator)", file=sys.stderr)
    return 0
