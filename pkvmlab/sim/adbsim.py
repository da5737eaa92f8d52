"""The pkvmlab Pixel SIMULATOR's ``adb`` (see pixel.py): devices, shell, push/pull, root, reboot, install.

``adb shell CMD`` runs CMD with the host's ``/bin/sh`` in the device's fake
root: absolute device paths are rewritten into it and device programs are the
simulator's (programs.py); a pushed ``elprobe`` run as a command goes to the
simulator's stand-in.  Output comes back line by line with device paths.
"""

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from .device import (
    ENV_DIR,
    ENV_TIME_SCALE,
    ENV_WAIT,
    MODELS,
    SimExit,
    boot_android,
    hang_up_with_parent,
    host_path,
    locked,
    select,
    sync_root,
    time_scale,
    to_device_text,
    visible,
)

# Absolute device paths that live in the fake root (everything else is the host's: /bin/sh, coreutils).
_DEVICE_PATH = re.compile(r"(?<![\w.~/$-])/(?=(?:apex|data|dev|proc|sys|system|vendor|sdcard|storage|mnt|product"
                          r"|odm|metadata|linkerconfig)(?:/|\b))")


# A file named elprobe in command position (start, after ; & | ( ` $( then do else exec, or after timeout/env):
# run through the simulator's stand-in, which checks the pushed file and prints the recorded output.
_ELPROBE_CALL = re.compile(
    r"(?P<lead>(?:^|[;&|(){}`\n]|\$\(|\b(?:then|do|else|exec|nohup|time)\b)\s*"
    r"(?:timeout\s+(?:-[sk]\s+\S+\s+)*\S+\s+)?(?:env\s+(?:\w+=\S*\s+)*)?)"
    r"(?P<path>(?P<q>['\"]?)(?:[^\s;&|'\"]*/)?elprobe(?P=q))(?=$|[\s;&|)])")

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
    proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=root, env=env, preexec_fn=hang_up_with_parent,
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
    code = proc.wait()
    return 128 - code if code < 0 else code   # a signal, as the device's shell reports it (143: SIGTERM)


def adb_root(devdir, root):
    with locked(devdir) as state:
        if not root:
            state["adb_root"] = False
            print("restarting adbd as non root")
            return 0
        # adbd keeps root only where ro.debuggable=1, i.e. userdebug and eng builds; a user build answers
        # this line (AOSP packages/modules/adb daemon/restart_service.cpp restart_root_service(), which
        # checks ro.debuggable through __android_log_is_debuggable(); daemon/main.cpp should_drop_privileges()).
        if state["build_type"] not in ("userdebug", "eng"):
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
            # 'adb reboot fastboot' enters fastbootd, Android's userspace fastboot (source.android.com
            # docs/core/architecture/bootloader/fastbootd); 'bootloader' the bootloader's own.
            state["mode"] = "bootloader" if target == "bootloader" else "fastbootd"
            state["adb_root"] = False
        elif target == "":
            boot_android(state, "slot")
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
