"""SIMULATOR of Pixel phones for pkvmlab's own tests: fake ``adb`` and ``fastboot``, not real ones.

Nothing here talks to a phone.  This module stands in for the ``adb`` and
``fastboot`` programs (through ``pkvmlab/sim/bin/adb`` and ``.../fastboot``) so
pkvmlab's real ADB driver, fastboot flashing and Android strategy can run end
to end without a phone.  What the fake tools print is taken from documented
Pixel/AVF behaviour (``notes/device-facts.md``: ``vm info`` lines, run-microdroid
output, pvmfw console markers, the kernel's EL and KVM lines, fastboot's
``getvar`` replies); where the notes mark a detail unconfirmed ([U]) the text
here is a plausible stand-in, not a record of a device.

State: one directory per simulated device under ``$PKVMLAB_PIXEL_SIM`` (default
``/tmp/pkvmlab-pixel-sim-<uid>``, where a Pixel 8 with serial ``PKVMSIM0008`` is
created on first use): ``<id>/state.json`` (mode, lock state, slots, what was
written to which partition with its sha256, faults) and ``<id>/root/``, a fake
device file system.  ``adb shell CMD`` runs CMD with the host's ``/bin/sh``,
absolute device paths (``/data``, ``/dev``, ``/proc``, ``/apex``, ...) rewritten
into that fake root and device programs (getprop, uname, id, dmesg, vm, crosvm)
replaced by simulated ones.

Fault injection, all through ``state.json`` (see :func:`new_state`):
``unlocked: false`` (locked bootloader), ``attached: false`` (unplugged),
``faults.drop_off_after_writes: N`` (the device drops off USB during its
N+1-th partition write), ``faults.never_boot_complete: true``
(``sys.boot_completed`` never becomes 1), ``build_type: user`` (``adb root``
refused), ``pvmfw_loaded: false`` (crosvm ``--protected-vm`` fails with ENOENT),
two device directories (two phones attached; the same ``serial`` in both is
two phones that both match).

The EL probe: a pushed file named ``elprobe`` (an aarch64 ELF), run on the
device as a command, prints the output recorded from the real probe on the
QEMU board (``elprobe-protected.jsonl`` next to this file) with the simulated
kernel's release; as the shell user, or with no ``/dev/kvm``, it prints what
the probe prints when it cannot open ``/dev/kvm`` and exits 3.

Differences from the real tools, on purpose: fastboot waiting for a missing
device gives up after ``$PKVMLAB_PIXEL_SIM_WAIT`` seconds (default 10) where the
real one waits forever; simulated time (boots, VM start) is scaled by
``$PKVMLAB_PIXEL_SIM_TIME_SCALE`` (default 1.0).

Uses only the standard library: the wrappers run it with any python3.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

try:
    from . import images as simimages
except ImportError:   # run as a script by the bin/ wrappers: load the sibling module by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import images as simimages  # noqa: E402

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
}
AB_PARTITIONS = ("boot", "init_boot", "vendor_boot", "vendor_kernel_boot", "dtbo", "vbmeta", "vbmeta_system",
                 "pvmfw", "system", "system_dlkm", "vendor", "vendor_dlkm")
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
# Absolute device paths that live in the fake root (everything else is the host's: /bin/sh, coreutils).
_DEVICE_PATH = re.compile(r"(?<![\w.~/$-])/(?=(?:apex|data|dev|proc|sys|system|vendor|sdcard|storage|mnt|product"
                          r"|odm|metadata|linkerconfig)(?:/|\b))")

# A file named elprobe in command position (start, after ; & | ( ` $( then do else exec, or after timeout/env):
# run through the simulator's stand-in, which checks the pushed file and prints the recorded output.
_ELPROBE_CALL = re.compile(
    r"(?P<lead>(?:^|[;&|(){}`\n]|\$\(|\b(?:then|do|else|exec|nohup|time)\b)\s*"
    r"(?:timeout\s+(?:-[sk]\s+\S+\s+)*\S+\s+)?(?:env\s+(?:\w+=\S*\s+)*)?)"
    r"(?P<path>(?P<q>['\"]?)(?:[^\s;&|'\"]*/)?elprobe(?P=q))(?=$|[\s;&|)])")
ELPROBE_RECORDING = Path(__file__).resolve().parent / "elprobe-protected.jsonl"
EM_AARCH64 = 183


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
        "mode": "android",                 # android | bootloader
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
        "faults": {"drop_off_after_writes": None, "never_boot_complete": False},
    }
    for key, value in overrides.items():
        if key == "faults":
            state["faults"].update(value)
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
    _boot(state, "slot")
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
    found = []
    for devdir in device_dirs():
        state = load_state(devdir)
        if state.get("attached", True) and state.get("mode") == mode:
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


def _stock_kernel(state):
    return {"release": MODELS[state["model"]]["stock_release"], "kvm_mode": "protected-nvhe", "cmdline": "",
            "source": "stock"}


def _kernel_from_image(data, source):
    parsed = simimages.parse_sim_kernel(data)
    if parsed is None:
        return None
    release, kvm_mode, cmdline = parsed
    return {"release": release, "kvm_mode": kvm_mode, "cmdline": cmdline or simimages.boot_image_cmdline(data),
            "source": source}


def _boot(state, how, image=None):
    """Boot Android: ``how`` is 'slot' (what the active slot holds) or 'image' (fastboot boot, one-off)."""
    kernel = None
    if how == "image":
        kernel = _kernel_from_image(image, "fastboot boot")
    else:
        written = state["written"].get(f"boot_{state['current_slot']}")
        if written and written.get("kernel"):
            kernel = dict(written["kernel"], source=f"boot_{state['current_slot']}")
    kernel = kernel or _stock_kernel(state)
    if not state.get("pkvm_enabled", True) and kernel["kvm_mode"].startswith("protected"):
        kernel["kvm_mode"] = "nvhe"
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
        "ro.boot.hypervisor.protected_vm.supported": "true" if protected else "",
        "ro.boot.hypervisor.version": "kvm.arm-protected" if protected else ("kvm.arm" if kvm_up(state) else ""),
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
    lines.append((0.118743, "smp: Brought up 1 node, 8 CPUs"))
    lines.append((0.118760, "CPU: All CPU(s) started at EL2"))
    lines.append((0.131044, KVM_LINES[kernel["kvm_mode"]]))
    lines.append((2.402113, "init: Loading module /lib/modules/pkvm_s2mpu.ko"))
    return [f"[{t:12.6f}] {text}" for t, text in lines]


def microdroid_release(state):
    active = state["apex"].get("active")
    return (active or {}).get("microdroid_kernel_release") or MICRODROID_STOCK_RELEASE


# ---------------------------------------------------------------------------------------------- fake root


def _stub(python, name, devdir):
    script = Path(__file__).resolve()
    return (f"#!/bin/sh\n# pkvmlab Pixel simulator: stands in for the device's {name}\n"
            f"exec {shlex.quote(python)} {shlex.quote(str(script))} tool {shlex.quote(str(devdir))} {name} \"$@\"\n")


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
    _write_if_changed(fs / "microdroid_kernel", "pkvmlab simulator fixture: microdroid kernel\n")
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


# -------------------------------------------------------------------------------------------------- adb


def adb_main(argv):
    serial = None
    args = list(argv)
    while args and args[0].startswith("-") and args[0] not in ("--help", "--version"):
        opt = args.pop(0)
        if opt == "-s":
            serial = args.pop(0) if args else None
        elif opt in ("-d", "-e", "-a"):
            continue
        elif opt in ("-t", "-H", "-P", "-L"):
            args.pop(0)
        else:
            raise SimExit(1, f"adb: unknown option {opt}")
    if not serial:
        serial = os.environ.get("ANDROID_SERIAL")
    if not args:
        raise SimExit(1, "adb: usage: adb [-s SERIAL] COMMAND ...")
    command, rest = args[0], args[1:]
    if command in ("version", "--version"):
        print("Android Debug Bridge version 1.0.41\nVersion 35.0.2-pkvmlab-sim (simulator)")
        return 0
    if command in ("start-server", "kill-server"):
        return 0
    if command == "devices":
        return adb_devices("-l" in rest)
    if command.startswith("wait-for"):
        return adb_wait(serial, command)
    if command == "connect":
        target = rest[0] if rest else ""
        if any(s["serial"] == target for _, s in visible("android")):
            print(f"already connected to {target}")
            return 0
        raise SimExit(1, f"failed to connect to '{target}': Connection refused")
    devdir, state = select("android", serial, "adb")
    handler = {
        "get-state": lambda: print("device") or 0,
        "get-serialno": lambda: print(state["serial"]) or 0,
        "shell": lambda: adb_shell(devdir, rest),
        "root": lambda: adb_root(devdir, True),
        "unroot": lambda: adb_root(devdir, False),
        "reboot": lambda: adb_reboot(devdir, rest),
        "push": lambda: adb_push(devdir, state, rest),
        "pull": lambda: adb_pull(devdir, rest),
        "install": lambda: adb_install(devdir, rest),
        "logcat": lambda: adb_shell(devdir, ["logcat", *rest]),
    }.get(command)
    if handler is None:
        raise SimExit(1, f"adb: unknown command {command}")
    return handler()


def adb_devices(long):
    print("List of devices attached")
    for index, (_, state) in enumerate(visible("android"), start=1):
        info = MODELS[state["model"]]
        line = f"{state['serial']}\tdevice"
        if long:
            line = (f"{state['serial']:22} device usb:1-{index} product:{info['device']} "
                    f"model:{info['model'].replace(' ', '_')} device:{info['device']} transport_id:{index}")
        print(line)
    print()
    return 0


def adb_wait(serial, command):
    deadline = time.monotonic() + float(os.environ.get(ENV_WAIT, "10"))
    while time.monotonic() < deadline:
        if any(serial is None or s["serial"] == serial for _, s in visible("android")):
            return 0
        time.sleep(0.05)
    raise SimExit(1, f"pkvmlab-sim: adb {command} gave up after {os.environ.get(ENV_WAIT, '10')} s")


def adb_shell(devdir, args):
    while args and args[0] in ("-t", "-T", "-x", "-n"):
        args = args[1:]
    if not args:
        raise SimExit(1, "pkvmlab-sim: interactive adb shell is not simulated; give a command")
    with locked(devdir) as state:
        root = sync_root(devdir, state)
    command = _ELPROBE_CALL.sub(r"\g<lead>/system/bin/pkvmlab-sim-elprobe \g<path>", " ".join(args))
    command = _DEVICE_PATH.sub(str(root).replace("\\", "\\\\") + "/", command)
    env = {
        "PATH": f"{root}/system/bin:{root}/apex/com.android.virt/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(root / "data/local/tmp"),
        "TMPDIR": str(root / "data/local/tmp"),
        "LANG": "C.UTF-8",
        ENV_DIR: str(Path(devdir).parent),
        ENV_TIME_SCALE: str(time_scale()),
    }
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Pass output on line by line as it comes (like adb's shell protocol), paths turned back into device paths.
    sinks = {proc.stdout: sys.stdout.buffer, proc.stderr: sys.stderr.buffer}
    pending = {proc.stdout: b"", proc.stderr: b""}
    with selectors.DefaultSelector() as selector:
        for stream in sinks:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                data = key.fileobj.read1(65536)
                if not data:
                    selector.unregister(key.fileobj)
                    data, pending[key.fileobj] = pending[key.fileobj], b""
                else:
                    *lines, pending[key.fileobj] = (pending[key.fileobj] + data).split(b"\n")
                    data = b"".join(line + b"\n" for line in lines)
                if data:
                    sinks[key.fileobj].write(to_device_text(devdir, data))
                    sinks[key.fileobj].flush()
    return proc.wait()


def adb_root(devdir, root):
    with locked(devdir) as state:
        if not root:
            state["adb_root"] = False
            print("restarting adbd as non root")
            return 0
        if state["build_type"] == "user":
            raise SimExit(1, "adbd cannot run as root in production builds")
        if state["adb_root"]:
            print("adbd is already running as root")
            return 0
        state["adb_root"] = True
    print("restarting adbd as root")
    return 0


def adb_reboot(devdir, args):
    with locked(devdir) as state:
        target = args[0] if args else ""
        if target in ("bootloader", "fastboot"):
            state["mode"] = "bootloader"
            state["adb_root"] = False
        elif target == "":
            _boot(state, "slot")
        else:
            raise SimExit(1, f"pkvmlab-sim: adb reboot {target} is not simulated")
        sync_root(devdir, state)
    return 0


def _writable(state, device_path):
    return state["adb_root"] or device_path.startswith(("/data/local/tmp", "/sdcard"))


def adb_push(devdir, state, args):
    args = [a for a in args if not a.startswith("--")]
    if len(args) < 2:
        raise SimExit(1, "adb: push requires an argument")
    *sources, remote = args
    for source in sources:
        local = Path(source)
        if not local.is_file():
            raise SimExit(1, f"adb: error: cannot stat '{source}': No such file or directory")
        target = remote + local.name if remote.endswith("/") else remote
        dest = host_path(devdir, target)
        if dest.is_dir():
            target = target.rstrip("/") + "/" + local.name
            dest = dest / local.name
        if not _writable(state, target):
            raise SimExit(1, f"adb: error: failed to copy '{source}' to '{target}': remote couldn't create file: "
                             "Permission denied")
        if not dest.parent.is_dir():
            raise SimExit(1, f"adb: error: failed to copy '{source}' to '{target}': remote secure_mkdirs() failed")
        shutil.copyfile(local, dest)
        dest.chmod(local.stat().st_mode & 0o777)
        print(f"{source}: 1 file pushed, 0 skipped. 120.0 MB/s ({local.stat().st_size} bytes in 0.001s)")
    return 0


def adb_pull(devdir, args):
    args = [a for a in args if not a.startswith("-")]
    if not args:
        raise SimExit(1, "adb: pull requires an argument")
    remote = args[0]
    local = Path(args[1]) if len(args) > 1 else Path(Path(remote).name)
    source = host_path(devdir, remote)
    if not source.is_file():
        raise SimExit(1, f"adb: error: failed to stat remote object '{remote}': No such file or directory")
    if local.is_dir():
        local = local / source.name
    shutil.copyfile(source, local)
    print(f"{remote}: 1 file pulled, 0 skipped. 110.0 MB/s ({source.stat().st_size} bytes in 0.001s)")
    return 0


def adb_install(devdir, args):
    files = [a for a in args if not a.startswith("-")]
    if len(files) != 1:
        raise SimExit(1, "adb: install requires one file here (simulator)")
    path = Path(files[0])
    if not path.is_file():
        raise SimExit(1, f"adb: failed to stat {path}: No such file or directory")
    data = path.read_bytes()
    print("Performing Streamed Install")
    if path.suffix != ".apex":
        raise SimExit(1, "adb: failed to install: only APEX installs are simulated")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("apex_manifest.json"))
            extra = json.loads(archive.read("pkvmlab-sim.json")) if "pkvmlab-sim.json" in archive.namelist() else {}
    except (zipfile.BadZipFile, KeyError, ValueError):
        raise SimExit(1, f"adb: failed to install {path}: Failure [INSTALL_FAILED_INVALID_APK: "
                         "Failed to parse APEX package]") from None
    with locked(devdir) as state:
        state["apex"]["staged"] = {"name": manifest.get("name"), "version": manifest.get("version"),
                                   "sha256": hashlib.sha256(data).hexdigest(),
                                   "microdroid_kernel_release": extra.get("microdroid_kernel_release")}
    print("Success. Reboot device to activate staged apex")
    return 0


# --------------------------------------------------------------------------------------------- fastboot


def fastboot_main(argv):
    serial = None
    args = list(argv)
    while args and args[0].startswith("-") and args[0] not in ("--version", "--help"):
        opt = args.pop(0)
        if opt == "-s":
            serial = args.pop(0) if args else None
        elif opt in ("-S", "--slot"):
            args.pop(0)
        elif opt in ("-w", "--skip-reboot", "--disable-verity", "--disable-verification"):
            continue
        else:
            raise SimExit(1, f"fastboot: unknown option {opt}")
    serial = serial or os.environ.get("ANDROID_SERIAL")
    if not args:
        raise SimExit(1, "fastboot: usage: no command")
    command, rest = args[0], args[1:]
    if command == "--version":
        print("fastboot version 35.0.2-pkvmlab-sim (simulator)")
        return 0
    if command == "devices":
        for index, (_, state) in enumerate(visible("bootloader"), start=1):
            print(f"{state['serial']}\tfastboot" + (f" usb:1-{index}" if "-l" in rest else ""))
        return 0
    devdir = _fastboot_wait(serial)
    handler = {
        "getvar": lambda: fastboot_getvar(devdir, rest),
        "flash": lambda: fastboot_flash(devdir, rest),
        "boot": lambda: fastboot_boot(devdir, rest),
        "reboot": lambda: fastboot_reboot(devdir, rest),
        "continue": lambda: fastboot_reboot(devdir, []),
        "set_active": lambda: fastboot_set_active(devdir, rest),
        "oem": lambda: fastboot_oem(devdir, rest),
        "flashing": lambda: fastboot_flashing(devdir, rest),
        "erase": lambda: fastboot_erase(devdir, rest),
    }.get(command)
    if handler is None:
        raise SimExit(1, f"fastboot: usage: unknown command {command}")
    return handler()


def _fastboot_wait(serial):
    waited = float(os.environ.get(ENV_WAIT, "10"))
    deadline = time.monotonic() + waited
    announced = False
    while True:
        try:
            devdir, _ = select("bootloader", serial, "fastboot")
            return devdir
        except SimExit as err:
            if "more than one" in err.message:
                raise
        if not announced:
            print(f"< waiting for {serial or 'any device'} >", file=sys.stderr, flush=True)
            announced = True
        if time.monotonic() >= deadline:
            raise SimExit(1, f"pkvmlab-sim: gave up waiting for {serial or 'any device'} after {waited:g} s "
                             "(the real fastboot waits forever)")
        time.sleep(0.05)


def _err(line):
    print(line, file=sys.stderr, flush=True)


def _step(label, result, seconds=0.001):
    _err(f"{label:50} {result}" + (f" [{seconds:7.3f}s]" if result == "OKAY" else ""))


def _partition_name(state, name):
    base = name[:-2] if name.endswith(("_a", "_b")) else name
    if base in AB_PARTITIONS:
        return name if name != base else f"{base}_{state['current_slot']}"
    if base in PLAIN_PARTITIONS:
        return name
    return None


def fastboot_getvar(devdir, args):
    if len(args) != 1:
        raise SimExit(1, "fastboot: usage: getvar VARIABLE")
    var = args[0]
    state = load_state(devdir)
    info = MODELS[state["model"]]
    values = {
        "unlocked": "yes" if state["unlocked"] else "no",
        "secure": "yes",
        "current-slot": state["current_slot"],
        "slot-count": "2",
        "product": info["device"],
        "serialno": state["serial"],
        "is-userspace": "no",
        "version-bootloader": f"{info['device']}-pkvmsim-1.0",
        "max-download-size": "0x10000000",
        "off-mode-charge": "1",
    }
    if var.startswith("has-slot:"):
        values[var] = "yes" if var.split(":", 1)[1] in AB_PARTITIONS else "no"
    if var.startswith("partition-type:") and _partition_name(state, var.split(":", 1)[1]):
        values[var] = "raw"
    if var not in values:
        _err(f"getvar:{var} FAILED (remote: 'GetVar Variable Not found')")
        _err("Finished. Total time: 0.001s")
        return 1
    _err(f"{var}: {values[var]}")
    _err("Finished. Total time: 0.001s")
    return 0


def fastboot_flash(devdir, args):
    if len(args) != 2:
        raise SimExit(1, "fastboot: usage: flash PARTITION FILENAME (the simulator needs both)")
    requested, filename = args
    path = Path(filename)
    if not path.is_file():
        raise SimExit(1, f"fastboot: error: cannot load '{filename}': No such file or directory")
    data = path.read_bytes()
    with locked(devdir) as state:
        partition = _partition_name(state, requested)
        label = f"Sending '{partition or requested}' ({max(1, len(data) // 1024)} KB)"
        drop = state["faults"].get("drop_off_after_writes")
        if drop is not None and state["writes"] >= int(drop):
            state["attached"] = False
            _step(label, "FAILED (Write to device failed (No such device))")
            raise SimExit(1, "fastboot: error: Command failed")
        _step(label, "OKAY")
        writing = f"Writing '{partition or requested}'"
        if partition is None:
            _step(writing, f"FAILED (remote: 'Partition {requested} not found')")
            raise SimExit(1, "fastboot: error: Command failed")
        if not state["unlocked"]:
            _step(writing, "FAILED (remote: 'Flashing is not allowed in Lock State')")
            raise SimExit(1, "fastboot: error: Command failed")
        record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        kernel = _kernel_from_image(data, partition) if partition.startswith("boot_") else None
        if kernel:
            record["kernel"] = kernel
        state["written"][partition] = record
        state["writes"] += 1
        _step(writing, "OKAY", 0.002)
    _err("Finished. Total time: 0.004s")
    return 0


def fastboot_boot(devdir, args):
    if len(args) != 1:
        raise SimExit(1, "fastboot: usage: boot KERNEL")
    path = Path(args[0])
    if not path.is_file():
        raise SimExit(1, f"fastboot: error: cannot load '{args[0]}': No such file or directory")
    data = path.read_bytes()
    with locked(devdir) as state:
        _step(f"Sending '{path.name}' ({max(1, len(data) // 1024)} KB)", "OKAY")
        if not data.startswith(simimages.BOOT_MAGIC):
            _step("Booting", "FAILED (remote: 'invalid boot image')")
            raise SimExit(1, "fastboot: error: Command failed")
        if not state["unlocked"]:
            _step("Booting", "FAILED (remote: 'Boot is not allowed in Lock State')")
            raise SimExit(1, "fastboot: error: Command failed")
        _boot(state, "image", data)
        state["last_one_off_boot_sha256"] = hashlib.sha256(data).hexdigest()
        sync_root(devdir, state)
        _step("Booting", "OKAY", 0.05)
    _err("Finished. Total time: 0.060s")
    return 0


def fastboot_reboot(devdir, args):
    with locked(devdir) as state:
        if args and args[0] == "bootloader":
            state["mode"] = "bootloader"
        elif args:
            raise SimExit(1, f"pkvmlab-sim: fastboot reboot {args[0]} is not simulated")
        else:
            _boot(state, "slot")
            sync_root(devdir, state)
    _err("Rebooting" + (" into bootloader" if args else "") + "                                         OKAY")
    _err("Finished. Total time: 0.050s")
    return 0


def fastboot_set_active(devdir, args):
    with locked(devdir) as state:
        if not args or args[0] not in ("a", "b"):
            raise SimExit(1, "fastboot: usage: set_active a|b")
        if not state["unlocked"]:
            _step(f"Setting current slot to '{args[0]}'", "FAILED (remote: 'Not allowed in Lock State')")
            raise SimExit(1, "fastboot: error: Command failed")
        state["current_slot"] = args[0]
    _step(f"Setting current slot to '{args[0]}'", "OKAY")
    return 0


def fastboot_oem(devdir, args):
    with locked(devdir) as state:
        if args[:1] == ["pkvm"] and args[1:2] in (["enable"], ["disable"]):
            state["pkvm_enabled"] = args[1] == "enable"
            _step(" ".join(["oem", *args]), "OKAY")
            return 0
    _err("FAILED (remote: 'Unknown OEM command')")
    return 1


def fastboot_flashing(devdir, args):
    with locked(devdir) as state:
        if args[:1] == ["unlock"]:
            state["unlocked"] = True
        elif args[:1] == ["lock"]:
            state["unlocked"] = False
        else:
            raise SimExit(1, "fastboot: usage: flashing lock|unlock")
    _err("OKAY [  0.040s]\nFinished. Total time: 0.041s")
    return 0


def fastboot_erase(devdir, args):
    with locked(devdir) as state:
        partition = _partition_name(state, args[0]) if args else None
        if partition is None or not state["unlocked"]:
            _step(f"Erasing '{args[0] if args else ''}'", "FAILED (remote: 'not allowed')")
            raise SimExit(1, "fastboot: error: Command failed")
        state["written"][partition] = {"sha256": None, "size": 0, "erased": True}
        state["writes"] += 1
    _step(f"Erasing '{partition}'", "OKAY")
    return 0


# ------------------------------------------------------------------------------------- device programs


def tool_main(devdir, name, args):
    devdir = Path(devdir)
    return {"getprop": tool_getprop, "setprop": tool_setprop, "uname": tool_uname, "id": tool_id,
            "whoami": tool_whoami, "dmesg": tool_dmesg, "logcat": tool_logcat, "vm": tool_vm,
            "crosvm": tool_crosvm, "pkvmlab-sim-elprobe": tool_elprobe}[name](devdir, args)


def tool_getprop(devdir, args):
    with locked(devdir) as state:
        if args and args[0] in ("sys.boot_completed", "dev.bootcomplete") and state["boot_polls_left"] > 0:
            state["boot_polls_left"] -= 1
        props = properties(state)
    if not args:
        for key in sorted(props):
            print(f"[{key}]: [{props[key]}]")
    else:
        print(props.get(args[0], args[1] if len(args) > 1 else ""))
    return 0


def tool_setprop(devdir, args):
    if len(args) != 2:
        raise SimExit(1, "usage: setprop NAME VALUE")
    with locked(devdir) as state:
        if not state["adb_root"] and not args[0].startswith(("debug.", "persist.debug.")):
            raise SimExit(1, f"Failed to set property '{args[0]}' to '{args[1]}'.\nSee dmesg for error reason.")
        state["properties"][args[0]] = args[1]
    return 0


def tool_uname(devdir, args):
    state = load_state(devdir)
    release = state["kernel"]["release"]
    parts = {"-s": "Linux", "-n": "localhost", "-r": release, "-v": "#1 SMP PREEMPT", "-m": "aarch64",
             "-o": "Toybox"}
    flags = [a for a in args if a.startswith("-")] or ["-s"]
    if "-a" in flags:
        flags = ["-s", "-n", "-r", "-v", "-m", "-o"]
    print(" ".join(parts.get(f, "") for f in flags))
    return 0


def tool_id(devdir, args):
    root = load_state(devdir)["adb_root"]
    if "-u" in args:
        print(0 if root else 2000)
    elif "-un" in args or ("-u" in args and "-n" in args):
        print("root" if root else "shell")
    else:
        print("uid=0(root) gid=0(root) groups=0(root) context=u:r:su:s0" if root else
              "uid=2000(shell) gid=2000(shell) groups=2000(shell),1004(input),1007(log) context=u:r:shell:s0")
    return 0


def tool_whoami(devdir, args):
    print("root" if load_state(devdir)["adb_root"] else "shell")
    return 0


def tool_dmesg(devdir, args):
    state = load_state(devdir)
    if not state["adb_root"]:
        raise SimExit(1, "dmesg: klogctl: Permission denied")
    print("\n".join(dmesg_lines(state)))
    return 0


def tool_logcat(devdir, args):
    state = load_state(devdir)
    print("--------- beginning of main")
    print(f"01-01 00:00:02.000   512   512 I init    : pkvmlab simulator: {MODELS[state['model']]['model']} booted")
    if protected_kvm(state):
        print("01-01 00:00:05.000  1024  1024 I virtualizationservice: pkvmlab simulator: protected VMs supported")
    return 0


def _json_line(record):
    return json.dumps(record, separators=(",", ":"))


def elprobe_recording(release):
    """The recorded probe output (comment lines dropped), its start record's uname.release set to ``release``."""
    lines = []
    for line in ELPROBE_RECORDING.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        record = json.loads(line)
        if record.get("record") == "start" and isinstance(record.get("uname"), dict):
            record["uname"]["release"] = release
        lines.append(_json_line(record))
    return lines


def tool_elprobe(devdir, args):
    """A pushed ``elprobe`` run on the device: checked like exec(2) would, then the recorded output."""
    path, rest = Path(args[0]), args[1:]
    shown = to_device_text(devdir, str(path).encode()).decode()
    if not path.is_file():
        raise SimExit(127, f"/system/bin/sh: {shown}: inaccessible or not found")
    if not os.access(path, os.X_OK):
        raise SimExit(126, f"/system/bin/sh: {shown}: can't execute: Permission denied")
    head = path.read_bytes()[:20]
    if len(head) < 20 or head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != EM_AARCH64:
        raise SimExit(126, f"/system/bin/sh: {shown}: can't execute: Exec format error")
    if rest[:1] in (["--help"], ["--version"]):
        print("usage: elprobe [--timeout SECONDS] [--vm normal|protected|both] [probe ...] (pkvmlab simulator: "
              "prints a recorded run)")
        return 0
    state = load_state(devdir)
    recording = elprobe_recording(state["kernel"]["release"])
    if not state["adb_root"] or not kvm_up(state):
        # What elprobe.c prints when open("/dev/kvm") fails: start, fatal, an incomplete summary; exit 3.
        errno, name, text = ((13, "EACCES", "Permission denied") if kvm_up(state)
                             else (2, "ENOENT", "No such file or directory"))
        print(recording[0])
        print(_json_line({"record": "fatal", "error": "open /dev/kvm", "errno": errno, "errno_name": name,
                          "strerror": text}))
        print(_json_line({"record": "summary", "complete": False, "results": 0, "outcomes": {}, "duration_ms": 1}))
        return 3
    if not protected_kvm(state):
        raise SimExit(1, f"pkvmlab-sim: no recorded elprobe output for KVM mode {state['kernel']['kvm_mode']} "
                         "(only kvm-arm.mode=protected was recorded)")
    for line in recording:
        print(line, flush=True)
    sim_sleep(1.2)   # the recorded run took 1172 ms
    return 0


# vm(1): flags per Android version.  A13 has --cpus/--daemonize and debug default none; A15 --cpu-topology,
# debug default full (notes/device-facts.md 1.2).  Android 14 is given the A15 flags here [U].
_VM_FLAGS_COMMON = {"--console": 1, "--log": 1, "--mem": 1, "-m": 1, "--protected": 0, "-p": 0, "--debug": 1,
                    "--work-dir": 1, "--storage": 1, "--storage-size": 1, "--name": 1}
_VM_FLAGS = {
    13: {**_VM_FLAGS_COMMON, "--cpus": 1, "--cpu-affinity": 1, "--daemonize": 0, "-d": 0, "--task-profiles": 1},
    15: {**_VM_FLAGS_COMMON, "--cpu-topology": 1, "--hugepages": 0, "--boost-uclamp": 0, "--console-in": 1,
         "--gdb": 1, "--vendor": 1, "--devices": 1, "--gki": 1},
}


def _vm_flags(state):
    return _VM_FLAGS[13 if state["android_version"] <= 13 else 15]


def _vm_help(state, sub=None):
    flags = _vm_flags(state)
    if sub is None:
        subcommands = ["run-app", "run-microdroid", "run", "list", "info", "create-partition", "create-idsig",
                       "check-feature-enabled"]
        if state["android_version"] <= 13:
            subcommands = [s for s in subcommands if s != "check-feature-enabled"] + ["stop"]
        print("Android VM Tool\n\nUsage: vm <COMMAND>\n\nCommands:")
        for name in subcommands:
            print(f"  {name}")
        print("  help  Print this message or the help of the given subcommand(s)")
        return 0
    print(f"Usage: vm {sub} [OPTIONS]\n\nOptions:")
    for flag, takes in sorted(flags.items()):
        if flag.startswith("--"):
            print(f"      {flag}" + (" <VALUE>" if takes else ""))
    if state["android_version"] <= 13:
        print("      --debug <DEBUG>  Debug level of the VM [default: none] [possible values: none, app_only, full]")
    else:
        print("      --debug <DEBUG>  Debug level of the VM [default: full] [possible values: none, full]")
    print("  -h, --help  Print help")
    return 0


def _vm_info(state):
    protected, up = protected_kvm(state), kvm_up(state)
    if state["android_version"] <= 13 and up:
        print("Both protected and unprotected VMs are supported." if protected else
              "Only unprotected VMs are supported.")   # A13 wording [U]
    elif up:
        print("Both protected and non-protected VMs are supported." if protected else
              "Only non-protected VMs are supported.")
    else:
        print("VMs are not supported.")
    props = properties(state)
    if "ro.boot.hypervisor.version" in props:
        print(f"Hypervisor version: {props['ro.boot.hypervisor.version']}")
    if up:
        print("/dev/kvm exists.")
    if state["android_version"] >= 14:
        print("Assignable devices: []")
    if state["android_version"] >= 15:
        print('Available OS list: ["microdroid"]')
    return 0


def tool_vm(devdir, args):
    state = load_state(devdir)
    if not args or args[0] in ("-h", "--help", "help"):
        return _vm_help(state)
    sub, rest = args[0], args[1:]
    if "--help" in rest or "-h" in rest:
        return _vm_help(state, sub)
    if sub == "info":
        return _vm_info(state)
    if sub == "list":
        print("Running VMs: []")
        return 0
    if sub == "run-microdroid":
        return _vm_run_microdroid(devdir, state, rest)
    raise SimExit(2, f"pkvmlab-sim: vm {sub} is not simulated")


def _parse_flags(flags, args, tool):
    values, positional = {}, []
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg.startswith("-"):
            name, _, inline = arg.partition("=")
            if name not in flags:
                raise SimExit(2, f"error: unexpected argument '{name}' found\n\nUsage: {tool} [OPTIONS]\n\n"
                                 "For more information, try '--help'.")
            if flags[name]:
                if not inline and not args:
                    raise SimExit(2, f"error: a value is required for '{name} <VALUE>' but none was supplied")
                values.setdefault(name, []).append(inline or args.pop(0))
            else:
                values[name] = True
        else:
            positional.append(arg)
    return values, positional


def _vm_run_microdroid(devdir, state, args):
    values, _ = _parse_flags(_vm_flags(state), args, "vm run-microdroid")
    protected = bool(values.get("--protected") or values.get("-p"))
    default_debug = "none" if state["android_version"] <= 13 else "full"
    debug = values.get("--debug", [default_debug])[-1]
    if protected and not protected_kvm(state):
        raise SimExit(1, "Error: Failed to create VM: protected VMs are not supported on this device")
    if not kvm_up(state):
        raise SimExit(1, "Error: Failed to create VM: VMs are not supported on this device")
    with locked(devdir) as live:
        cid = live["next_cid"]
        live["next_cid"] += 1
    work = "/data/local/tmp/microdroid/pkvmsim-" + str(cid)
    host_path(devdir, work).mkdir(parents=True, exist_ok=True)
    console_file = values.get("--console", [None])[-1]
    log_file = values.get("--log", [None])[-1]
    out = sys.stdout

    def say(text, stream=out):
        print(text, file=stream, flush=True)

    say("found path /apex/com.android.virt/app/EmptyPayloadApp/EmptyPayloadApp.apk")
    say(f"creating work dir {work}")
    say(f"apk.idsig path: {work}/apk.idsig")
    say(f"instance.img path: {work}/instance.img")
    kind = "debuggable VM" if debug != "none" else "VM"
    say(f"Created {kind} from /apex/com.android.virt/app/EmptyPayloadApp/EmptyPayloadApp.apk with CID {cid}, "
        "state is STARTING.")
    console = open(console_file, "w") if console_file else out   # noqa: SIM115 - closed below
    log = open(log_file, "w") if log_file else out   # noqa: SIM115
    try:
        if protected:
            if not state.get("pvmfw_loaded", True):
                say("VM encountered an error: code=PVM_FIRMWARE_MISSING, message=pvmfw not loaded", sys.stderr)
                say("VM ended: Error", sys.stderr)
                return 1
            say("[INFO] pVM firmware", console)
            sim_sleep(0.05)
            say("[INFO] Starting payload...", console)
        for stamp, text in _guest_kernel_lines(state, protected):
            say(f"[{stamp:12.6f}] {text}", console)
        sim_sleep(0.2)
        say("payload started", sys.stderr)
        say("01-01 00:00:01.500   300   300 I microdroid_manager: payload started", log)
        say("01-01 00:00:01.600   300   300 I adbd    : adbd listening on vsock:5555", log)
        sim_sleep(0.1)
        say("01-01 00:00:01.700   310   310 I vm_payload: Notified host payload ready successfully", log)
        say("payload is ready", sys.stderr)
        sim_sleep(0.05)
        say("payload finished with exit code 0", sys.stderr)
        say("VM ended: Shutdown", sys.stderr)
    finally:
        for stream in (console, log):
            if stream is not out:
                stream.close()
    return 0


def _guest_kernel_lines(state, protected):
    lines = [(0.0, "Booting Linux on physical CPU 0x0000000000 [0x410fd083]"),
             (0.0, f"Linux version {microdroid_release(state)} (pkvmlab-sim@sim) #1 SMP PREEMPT"),
             (0.0, "Machine model: linux,dummy-virt")]
    if protected:
        lines += [(0.0, "OF: reserved mem: initialized node restricted_dma_reserved, compatible id "
                        "restricted-dma-pool"),
                  (0.0, "software IO TLB: Reserved memory: created restricted DMA pool at 0x0000000080000000, "
                        "size 12 MiB"),
                  (0.0, "smccc: KVM: hypervisor services detected (0x00000000 0x00000000 0x00000000 0x0000009d)")]
    else:
        lines.append((0.0, "smccc: KVM: hypervisor services detected (0x00000000 0x00000000 0x00000000 0x00000003)"))
    lines.append((0.412337, "CPU: All CPU(s) started at EL1"))
    return lines


_CROSVM_RUN_FLAGS = {"--protected-vm": 0, "--protected-vm-without-firmware": 0, "--protected-vm-with-firmware": 1,
                     "--unprotected-vm-with-firmware": 1, "--disable-sandbox": 0, "--mem": 1, "--cpus": 1,
                     "--params": 1, "-p": 1, "--serial": 1, "--cid": 1, "--swiotlb": 1,
                     "--unmap-guest-memory-on-fork": 0, "--initrd": 1, "-i": 1, "--block": 1, "--no-balloon": 0,
                     "--socket": 1, "--hypervisor": 1}


def tool_crosvm(devdir, args):
    state = load_state(devdir)
    args = list(args)
    while args and args[0].startswith("--") and args[0] != "run":
        flag = args.pop(0)
        if flag == "--log-level" and args:
            args.pop(0)
    if not args or args[0] != "run":
        raise SimExit(1, "pkvmlab-sim: only 'crosvm run' is simulated")
    values, positional = _parse_flags(_CROSVM_RUN_FLAGS, args[1:], "crosvm run")
    modes = [f for f in ("--protected-vm", "--protected-vm-without-firmware", "--protected-vm-with-firmware",
                         "--unprotected-vm-with-firmware") if f in values]
    if len(modes) > 1:
        raise SimExit(1, "[ERROR] Only one protection mode has to be specified")
    if len(positional) != 1:
        raise SimExit(1, "[ERROR] expected one kernel path")
    if not state["adb_root"]:
        raise SimExit(1, "[ERROR] failed to open /dev/kvm: Permission denied (os error 13)")
    if not kvm_up(state):
        raise SimExit(1, "[ERROR] failed to open /dev/kvm: No such file or directory (os error 2)")
    if not Path(positional[0]).is_file():
        raise SimExit(1, f"[ERROR] failed to open kernel image {positional[0]}: No such file or directory "
                         "(os error 2)")
    protected = bool(modes) and modes[0] != "--unprotected-vm-with-firmware"
    if protected and not protected_kvm(state):
        raise SimExit(1, "[ERROR] failed to create VM: Invalid argument (os error 22)")
    if "--protected-vm" in values and not state.get("pvmfw_loaded", True):
        raise SimExit(1, "[ERROR] failed to enable protected VM: No such file or directory (os error 2)")
    serial_path = None
    for spec in values.get("--serial", []):
        fields = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
        if fields.get("type") == "file" and fields.get("path"):
            serial_path = fields["path"]
    out = open(serial_path, "w") if serial_path else sys.stdout   # noqa: SIM115 - closed below
    print("[INFO:src/crosvm/sys/linux.rs] crosvm started (pkvmlab simulator)", file=sys.stderr, flush=True)
    try:
        if "--protected-vm" in values or "--protected-vm-with-firmware" in values:
            print("[INFO] pVM firmware", file=out, flush=True)
            print("[INFO] Starting payload...", file=out, flush=True)
        for stamp, text in _guest_kernel_lines(state, protected):
            print(f"[{stamp:12.6f}] {text}", file=out, flush=True)
        sim_sleep(0.05)
        print("[    0.530117] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
              file=out, flush=True)
        print("[    0.530201] Rebooting in 1 seconds..", file=out, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
    print("[INFO:src/crosvm/sys/linux.rs] guest reset requested, exiting (pkvmlab simulator)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- admin


def admin_main(args):
    """``pixel.py sim init|show|set ...``: make and change simulated devices (for tests and docs)."""
    import argparse
    parser = argparse.ArgumentParser(prog="pixel.py sim", description="manage simulated Pixel phones")
    sub = parser.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init")
    init.add_argument("--serial", default=DEFAULT_SERIAL)
    init.add_argument("--model", default="pixel-8", choices=sorted(MODELS))
    init.add_argument("--android", type=int, default=15, choices=(13, 14, 15))
    init.add_argument("--locked", action="store_true")
    init.add_argument("--user-build", action="store_true")
    sub.add_parser("show")
    change = sub.add_parser("set", help="KEY=JSON, e.g. faults.never_boot_complete=true")
    change.add_argument("--serial", default=DEFAULT_SERIAL)
    change.add_argument("assignments", nargs="+")
    options = parser.parse_args(args)
    if options.cmd == "init":
        overrides = {"unlocked": not options.locked, "build_type": "user" if options.user_build else "userdebug"}
        print(create_device(options.serial, options.model, options.android, **overrides))
    elif options.cmd == "show":
        for devdir in device_dirs():
            print(devdir, json.dumps(load_state(devdir), sort_keys=True))
    else:
        devdir = sim_dir() / options.serial
        with locked(devdir) as state:
            for assignment in options.assignments:
                key, _, value = assignment.partition("=")
                node = state
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node[part]
                node[leaf] = json.loads(value)
    return 0


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    prog = Path(argv[0]).name
    args = argv[1:]
    try:
        if prog == "adb":
            return adb_main(args)
        if prog == "fastboot":
            return fastboot_main(args)
        if args[:1] == ["tool"]:
            return tool_main(args[1], args[2], args[3:])
        if args[:1] == ["adb"]:
            return adb_main(args[1:])
        if args[:1] == ["fastboot"]:
            return fastboot_main(args[1:])
        if args[:1] == ["sim"]:
            return admin_main(args[1:])
        print("usage: pixel.py adb|fastboot|sim ... (pkvmlab Pixel simulator)", file=sys.stderr)
        return 2
    except SimExit as err:
        if err.message:
            print(err.message, file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
