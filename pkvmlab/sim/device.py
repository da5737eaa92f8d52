"""The simulated phone itself: its state file, what it is (kernel, properties, dmesg) and its fake root.

Part of the pkvmlab Pixel SIMULATOR (see pixel.py): nothing here talks to a
phone.  One directory per simulated device holds ``state.json`` and ``root/``;
every fake tool (adbsim, fastbootsim, programs) reads and changes the device
only through the functions here, under a lock, so concurrent calls behave.
"""

import contextlib
import fcntl
import json
import os
import shlex
import sys
import time
from pathlib import Path

from . import guest as simguest
from . import images as simimages

ENV_DIR = "PKVMLAB_PIXEL_SIM"
ENV_WAIT = "PKVMLAB_PIXEL_SIM_WAIT"
ENV_TIME_SCALE = "PKVMLAB_PIXEL_SIM_TIME_SCALE"
DEFAULT_SERIAL = "PKVMSIM0008"

# Per model: codename, SoC, the stock kernel's release.  Release strings are the simulator's own ("pkvmsim").
MODELS = {
    "pixel-6": {"model": "Pixel 6", "device": "oriole", "soc": "gs101", "tensor": "Tensor G1",
                "stock_release": "5.10.230-android13-4-pkvmsim-stock", "midr": "0x411fd440"},
    "pixel-7": {"model": "Pixel 7", "device": "panther", "soc": "gs201", "tensor": "Tensor G2",
                "stock_release": "5.10.230-android13-4-pkvmsim-stock", "midr": "0x412fd050"},
    "pixel-8": {"model": "Pixel 8", "device": "shiba", "soc": "zuma", "tensor": "Tensor G3",
                "stock_release": "5.15.167-android14-6-pkvmsim-stock", "midr": "0x410fd801"},
    "pixel-9": {"model": "Pixel 9", "device": "tokay", "soc": "zumapro", "tensor": "Tensor G4",
                "stock_release": "6.1.112-android14-11-pkvmsim-stock", "midr": "0x410fd801"},
    # Phones whose firmware hypervisor keeps EL2 (not Pixels; profiles for the harness's skips): Linux boots
    # at EL1, KVM says 'HYP mode not available', AVF's protected VMs are that hypervisor's.
    "gunyah-phone": {"model": "Snapdragon phone (simulated)", "device": "sdsim", "soc": "sm8650",
                     "tensor": None, "stock_release": "6.1.75-android14-11-pkvmsim-qcom",
                     "midr": "0x410fd810", "hypervisor": "gunyah"},
    "geniezone-phone": {"model": "Dimensity phone (simulated)", "device": "mtsim", "soc": "mt6989",
                        "tensor": None, "stock_release": "6.1.68-android14-11-pkvmsim-mtk",
                        "midr": "0x410fd810", "hypervisor": "geniezone"},
}
# What each firmware hypervisor leaves behind, and its public source (not measured here):
# - Gunyah (Qualcomm): reserved-memory 'gunyah_hyp_region' and the resource-manager driver 'gunyah_rsc_mgr'
#   (qualcomm-linux/kernel PR triage threads #1075, #1083, #1085; polygraphene/gunyah-on-sd-guide README.md);
#   Android's ro.boot.hypervisor.version=gunyah, /dev/gunyah, /sys/hypervisor/type = gunyah, protected VMs only
#   (same threads; unconfirmed per device [U]).
# - GenieZone (MediaTek): the 'gzvm' driver (upstream review of drivers/virt/geniezone on lore.kernel.org,
#   2023-2024) and /dev/gzvm; the exact lines and property value are unconfirmed [U].
FIRMWARE_HYPERVISORS = {
    "gunyah": {"version": "gunyah", "device": "gunyah",
               "dmesg": [(0.0, "OF: reserved mem: 0x0000000080000000..0x00000000805fffff (6144 KiB) nomap "
                               "non-reusable gunyah_hyp_region@80000000"),
                         (1.204411, "gunyah_rsc_mgr hypervisor:qcom,resource-manager: Gunyah resource manager "
                                    "ready")]},
    "geniezone": {"version": "geniezone", "device": "gzvm",
                  "dmesg": [(1.118032, "gzvm: GenieZone hypervisor (gzvm) ready")]},
}
AB_PARTITIONS = ("boot", "init_boot", "vendor_boot", "vendor_kernel_boot", "dtbo", "vbmeta", "vbmeta_system",
                 "vbmeta_vendor", "pvmfw", "system", "system_ext", "product", "system_dlkm", "vendor", "vendor_dlkm",
                 "odm", "odm_dlkm")
# Logical (dynamic) partitions live inside 'super' and only fastbootd, Android's userspace fastboot, can
# write them; the bootloader knows only physical partitions ("Fastboot in userspace",
# https://source.android.com/docs/core/architecture/bootloader/fastbootd).  Pixel 6+ builds put system,
# system_ext, product, vendor, odm and the *_dlkm module partitions there; the Pixel kernel flash writes
# vendor_dlkm and system_dlkm after 'fastboot reboot fastboot' (AOSP kernel/tests tools/flash_device.sh,
# VENDOR_KERNEL_IMGS_PIXEL_BRANCH and FLASH_LOGICAL_PARTITION_FIRST; android.googlesource.com/kernel/tests).
LOGICAL_PARTITIONS = ("system", "system_ext", "product", "vendor", "odm", "system_dlkm", "vendor_dlkm", "odm_dlkm")
FASTBOOT_MODES = ("bootloader", "fastbootd")   # both answer 'fastboot devices' with the same serial
PLAIN_PARTITIONS = ("misc", "metadata", "userdata")
STOCK_CMDLINE = "console=ttynull stack_depot_disable=on cgroup_disable=pressure kasan=off kvm-arm.mode=protected"
MICRODROID_STOCK_RELEASE = "6.1.90-microdroid-pkvmsim-stock"
ANDROID_SDK = {13: 33, 14: 34, 15: 35}
KVM_LINES = {
    "protected-nvhe": "kvm [1]: Protected nVHE mode initialized successfully",
    "protected-hvhe": "kvm [1]: Protected hVHE mode initialized successfully",
    "nvhe": "kvm [1]: Hyp mode initialized successfully",
    "vhe": "kvm [1]: VHE mode initialized successfully",
    "none": "kvm [1]: HYP mode not available",
}


class SimExit(Exception):
    def __init__(self, code, message=""):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------- state


def sim_dir():
    path = Path(os.environ.get(ENV_DIR) or f"/tmp/pkvmlab-pixel-sim-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def time_scale():
    try:
        return max(0.0, float(os.environ.get(ENV_TIME_SCALE, "1")))
    except ValueError:
        return 1.0


def hang_up_with_parent():
    """This process gets SIGHUP when its parent ends, as adbd hangs up a device command when its adb
    connection closes (the host's adb killed at a deadline, say); Linux prctl PR_SET_PDEATHSIG (1)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, 1, 0, 0, 0)   # SIGHUP is 1
    except (OSError, AttributeError):
        pass


def sim_sleep(seconds):
    time.sleep(seconds * time_scale())


def new_state(serial, model="pixel-8", android=15, **overrides):
    """A device as it comes out of the box with OEM unlocking done: unlocked, Android running, slot a."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model}; known: {', '.join(MODELS)}")
    state = {
        "simulator": "pkvmlab Pixel simulator (not a phone)",
        "serial": serial,
        "model": model,
        "android_version": android,
        "build_type": "userdebug",
        "attached": True,
        "mode": "android",                 # android | bootloader | fastbootd
        "unlocked": True,
        "pkvm_enabled": True,              # fastboot oem pkvm enable|disable
        "pvmfw_loaded": True,              # the bootloader loaded pvmfw for protected VMs
        "current_slot": "a",
        "written": {},                     # partition (with slot) -> {"sha256", "size", "at", "kernel"}
        "writes": 0,
        "boots": 0,
        "kernel": None,                    # what runs now: {"release", "kvm_mode", "cmdline", "source"}
        "adb_root": False,
        "boot_polls": 2,                   # polls of sys.boot_completed before it says 1 (boot takes time)
        "boot_polls_left": 0,
        "apex": {"active": None, "staged": None},
        "next_cid": 2048,
        "properties": {},                  # extra/overriding system properties
        "faults": {"drop_off_after_writes": None, "never_boot_complete": False, "elprobe_teardown_leak": False},
        "microdroid": {"payload_exit_code": None},   # None: AOSP's default payload, which never finishes
    }
    for key, value in overrides.items():
        if key in ("faults", "microdroid"):
            state[key].update(value)
        else:
            state[key] = value
    return state


def create_device(serial=DEFAULT_SERIAL, model="pixel-8", android=15, directory=None, device_id=None, **overrides):
    """Make a simulated device (booted to Android unless overridden); returns its directory."""
    root = Path(directory) if directory else sim_dir()
    devdir = root / (device_id or serial)
    devdir.mkdir(parents=True, exist_ok=True)
    state = new_state(serial, model, android, **overrides)
    mode = state["mode"]
    boot_android(state, "slot")
    state["mode"] = mode
    state["boot_polls_left"] = 0 if mode == "android" else state["boot_polls"]
    save_state(devdir, state)
    sync_root(devdir, state)
    return devdir


def device_dirs(root=None):
    root = Path(root) if root else sim_dir()
    dirs = sorted(p.parent for p in root.glob("*/state.json"))
    if not dirs and root == sim_dir() and not os.environ.get(ENV_DIR):
        dirs = [create_device(directory=root)]   # first use of the default directory: one Pixel 8
    return dirs


def load_state(devdir):
    return json.loads((Path(devdir) / "state.json").read_text())


def save_state(devdir, state):
    path = Path(devdir) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(devdir):
    """The device's state, saved on exit; one process at a time per device."""
    with open(Path(devdir) / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(devdir)
        try:
            yield state
        finally:
            save_state(devdir, state)
            fcntl.flock(lock, fcntl.LOCK_UN)


def visible(mode):
    """Devices attached and in ``mode`` (android for adb, bootloader for fastboot): [(dir, state)]."""
    modes = FASTBOOT_MODES if mode == "bootloader" else (mode,)
    found = []
    for devdir in device_dirs():
        state = load_state(devdir)
        if state.get("attached", True) and state.get("mode") in modes:
            found.append((devdir, state))
    return found


def select(mode, serial, tool):
    matches = [(d, s) for d, s in visible(mode) if serial is None or s["serial"] == serial]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if serial:
            raise SimExit(1, f"{tool}: device '{serial}' not found")
        raise SimExit(1, f"{tool}: no devices/emulators found")
    raise SimExit(1, f"{tool}: error: more than one device/emulator")


# ------------------------------------------------------------------------------------ what the device is


def firmware_hypervisor(state):
    """The firmware hypervisor holding EL2 on this phone (FIRMWARE_HYPERVISORS entry), or None (pKVM)."""
    return FIRMWARE_HYPERVISORS.get(MODELS[state["model"]].get("hypervisor"))


def _stock_kernel(state):
    mode = "none" if firmware_hypervisor(state) else "protected-nvhe"
    return {"release": MODELS[state["model"]]["stock_release"], "kvm_mode": mode, "cmdline": "",
            "source": "stock"}


def kernel_from_image(data, source):
    parsed = simimages.parse_sim_kernel(data)
    if parsed is None:
        return None
    release, kvm_mode, cmdline = parsed
    return {"release": release, "kvm_mode": kvm_mode, "cmdline": cmdline or simimages.boot_image_cmdline(data),
            "source": source}


def boot_android(state, how, image=None):
    """Boot Android: ``how`` is 'slot' (what the active slot holds) or 'image' (fastboot boot, one-off)."""
    kernel = None
    if how == "image":
        kernel = kernel_from_image(image, "fastboot boot")
    else:
        written = state["written"].get(f"boot_{state['current_slot']}")
        if written and written.get("kernel"):
            kernel = dict(written["kernel"], source=f"boot_{state['current_slot']}")
    kernel = kernel or _stock_kernel(state)
    if not state.get("pkvm_enabled", True) and kernel["kvm_mode"].startswith("protected"):
        kernel["kvm_mode"] = "nvhe"
    if firmware_hypervisor(state):
        kernel["kvm_mode"] = "none"      # the firmware keeps EL2, whatever the kernel would do with it
    state["kernel"] = kernel
    state["mode"] = "android"
    state["adb_root"] = False
    state["boots"] += 1
    state["boot_polls_left"] = state["boot_polls"]
    if state["apex"].get("staged"):
        state["apex"]["active"] = state["apex"]["staged"]
        state["apex"]["staged"] = None


def protected_kvm(state):
    return state["kernel"]["kvm_mode"].startswith("protected")


def kvm_up(state):
    return state["kernel"]["kvm_mode"] != "none"


def cmdline(state):
    extra = state["kernel"].get("cmdline") or ""
    words = STOCK_CMDLINE.split()
    if not state.get("pkvm_enabled", True):
        words = [w for w in words if not w.startswith("kvm-arm.mode=")]
    return " ".join(words + extra.split())


def boot_completed(state):
    return (state["mode"] == "android" and not state["faults"].get("never_boot_complete")
            and state["boot_polls_left"] <= 0)


def properties(state):
    info = MODELS[state["model"]]
    android = state["android_version"]
    protected = protected_kvm(state)
    props = {
        "ro.product.model": info["model"],
        "ro.product.device": info["device"],
        "ro.product.name": info["device"],
        "ro.product.manufacturer": "Google",
        "ro.hardware": info["device"],
        "ro.soc.model": info["soc"],
        "ro.serialno": state["serial"],
        "ro.boot.serialno": state["serial"],
        "ro.build.type": state["build_type"],
        "ro.debuggable": "0" if state["build_type"] == "user" else "1",
        "ro.build.version.release": str(android),
        "ro.build.version.sdk": str(ANDROID_SDK.get(android, 35)),
        "ro.build.fingerprint": f"google/{info['device']}/{info['device']}:{android}/PKVMSIM/1:"
                                f"{state['build_type']}/test-keys",
        "ro.boot.slot_suffix": f"_{state['current_slot']}",
        "ro.boot.verifiedbootstate": "orange" if state["unlocked"] else "green",
        "ro.boot.flash.locked": "0" if state["unlocked"] else "1",
        "ro.kernel.version": ".".join(state["kernel"]["release"].split(".")[:2]),
        "ro.boot.hypervisor.vm.supported": "true" if kvm_up(state) else "",
        "ro.boot.hypervisor.protected_vm.supported": "true" if protected or firmware_hypervisor(state) else "",
        "ro.boot.hypervisor.version": (firmware_hypervisor(state) or {}).get("version") or (
            "kvm.arm-protected" if protected else ("kvm.arm" if kvm_up(state) else "")),
        "sys.boot_completed": "1" if boot_completed(state) else "",
        "dev.bootcomplete": "1" if boot_completed(state) else "",
        "service.adb.root": "1" if state["adb_root"] else "0",
    }
    props.update(state.get("properties", {}))
    return {k: v for k, v in props.items() if v != ""}


def dmesg_lines(state):
    info = MODELS[state["model"]]
    kernel = state["kernel"]
    lines = [
        (0.0, f"Booting Linux on physical CPU 0x0000000000 [{info['midr']}]"),
        (0.0, f"Linux version {kernel['release']} (pkvmlab-sim@sim) (Android clang version 18.0.1) #1 SMP PREEMPT"),
        (0.0, f"Machine model: {info['model']} (pkvmlab simulator)"),
        (0.0, f"Kernel command line: {cmdline(state)}"),
        (0.0, "psci: probing for conduit method from DT."),
        (0.0, "psci: PSCIv1.1 detected in firmware."),
        (0.0, "psci: SMC Calling Convention v1.2"),
    ]
    if protected_kvm(state):
        lines.append((0.011021, "CPU features: detected: Protected KVM"))
    firmware = firmware_hypervisor(state)
    if firmware:
        lines += [line for line in firmware["dmesg"] if line[0] == 0.0]
    lines.append((0.118743, "smp: Brought up 1 node, 8 CPUs"))
    lines.append((0.118760, f"CPU: All CPU(s) started at {'EL1' if firmware else 'EL2'}"))
    lines.append((0.131044, KVM_LINES[kernel["kvm_mode"]]))
    if firmware:
        lines += [line for line in firmware["dmesg"] if line[0] != 0.0]
    else:
        lines.append((2.402113, "init: Loading module /lib/modules/pkvm_s2mpu.ko"))
    return [f"[{t:12.6f}] {text}" for t, text in sorted(lines, key=lambda line: line[0])]


def microdroid_release(state):
    active = state["apex"].get("active")
    return (active or {}).get("microdroid_kernel_release") or MICRODROID_STOCK_RELEASE


# ---------------------------------------------------------------------------------------------- fake root


def _stub(python, name, devdir):
    package_parent = Path(__file__).resolve().parents[2]     # the directory holding the pkvmlab package
    return (f"#!/bin/sh\n# pkvmlab Pixel simulator: stands in for the device's {name}\n"
            f"PYTHONPATH={shlex.quote(str(package_parent))} exec {shlex.quote(python)} -m pkvmlab.sim.pixel "
            f"tool {shlex.quote(str(devdir))} {name} \"$@\"\n")


def _write_if_changed(path, text, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    if mode is not None:
        path.chmod(mode)


def sync_root(devdir, state):
    """Make the fake file system agree with the state (programs, /dev/kvm, /proc/cmdline)."""
    root = Path(devdir) / "root"
    python = sys.executable or "python3"
    for name in ("getprop", "setprop", "uname", "id", "whoami", "dmesg", "logcat", "pkvmlab-sim-elprobe"):
        _write_if_changed(root / "system/bin" / name, _stub(python, name, devdir), 0o755)
    for name in ("vm", "crosvm"):
        _write_if_changed(root / "apex/com.android.virt/bin" / name, _stub(python, name, devdir), 0o755)
    fs = root / "apex/com.android.virt/etc/fs"
    fs.mkdir(parents=True, exist_ok=True)
    # AVF's Microdroid artifacts (AOSP packages/modules/Virtualization, build/microdroid):
    # kernel under etc/fs/, initrds under etc/.
    _write_if_changed(fs / "microdroid_kernel", simguest.MICRODROID_KERNEL_TEXT)
    for name, initrd in (("normal", "initrd_normal"), ("debuggable", "initrd_debug")):
        _write_if_changed(root / f"apex/com.android.virt/etc/microdroid_initrd_{name}.img",
                          simguest.INITRD_TEXT[initrd])
    _write_if_changed(root / "apex/com.android.virt/etc/microdroid.json",
                      json.dumps({"kernel": "/apex/com.android.virt/etc/fs/microdroid_kernel",
                                  "memory_mib": 256, "console_input_device": "hvc0"}) + "\n")
    (root / "data/local/tmp").mkdir(parents=True, exist_ok=True)
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    for name in ("null", "zero", "urandom", "random"):
        if not (dev / name).is_symlink():
            (dev / name).symlink_to(f"/dev/{name}")
    kvm = dev / "kvm"
    if state["kernel"] and kvm_up(state):
        kvm.touch()
    elif kvm.exists():
        kvm.unlink()
    firmware = firmware_hypervisor(state)
    if firmware:
        (dev / firmware["device"]).touch()
        _write_if_changed(root / "sys/hypervisor/type", firmware["version"] + "\n")
    if state["kernel"]:
        _write_if_changed(root / "proc/cmdline", cmdline(state) + "\n")
        _write_if_changed(root / "proc/version", f"Linux version {state['kernel']['release']} (pkvmlab-sim)\n")
    return root


def to_device_text(devdir, data):
    """Host paths of the fake root back to device paths in output."""
    prefix = str(Path(devdir) / "root").encode()
    return data.replace(prefix, b"")


def host_path(devdir, device_path):
    return Path(devdir) / "root" / device_path.lstrip("/")
