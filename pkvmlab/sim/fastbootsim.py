"""The pkvmlab Pixel SIMULATOR's ``fastboot`` (see pixel.py): getvar, flash, boot, reboot, oem, flashing.

Replies follow the real tool's shapes (progress lines on stderr, ``var: value``
for getvar, ``FAILED (remote: '...')``).  Faults from the device state: a locked
bootloader refuses flash and boot, ``drop_off_after_writes`` unplugs the device
mid-flash.  Waiting for an absent device gives up after ``$PKVMLAB_PIXEL_SIM_WAIT``.
"""

import hashlib
import os
import sys
import time
from pathlib import Path

from . import images as simimages
from .device import (
    AB_PARTITIONS,
    ENV_WAIT,
    LOGICAL_PARTITIONS,
    MODELS,
    PLAIN_PARTITIONS,
    SimExit,
    boot_android,
    kernel_from_image,
    load_state,
    locked,
    select,
    sync_root,
    visible,
)

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


def _base(name):
    return name[:-2] if name.endswith(("_a", "_b")) else name


def _partition_name(state, name):
    """The slotted partition ``name`` writes in the device's current mode, or None when it has none.

    The bootloader sees no logical partition (they are inside 'super'); fastbootd sees both kinds.
    """
    base = _base(name)
    if base in LOGICAL_PARTITIONS and state["mode"] != "fastbootd":
        return None
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
        "is-userspace": "yes" if state["mode"] == "fastbootd" else "no",
        "version-bootloader": f"{info['device']}-pkvmsim-1.0",
        "max-download-size": "0x10000000",
        "off-mode-charge": "1",
    }
    if var.startswith("has-slot:"):
        values[var] = "yes" if var.split(":", 1)[1] in AB_PARTITIONS else "no"
    if var.startswith("partition-type:") and _partition_name(state, var.split(":", 1)[1]):
        values[var] = "raw"
    if var.startswith("is-logical:") and state["mode"] == "fastbootd":
        values[var] = "yes" if _base(var.split(":", 1)[1]) in LOGICAL_PARTITIONS else "no"
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
            if _base(requested) in LOGICAL_PARTITIONS:
                _err(f"pkvmlab-sim: {requested} is a logical partition: only fastbootd ('fastboot reboot fastboot') "
                     "can write it")
            raise SimExit(1, "fastboot: error: Command failed")
        if not state["unlocked"]:
            _step(writing, "FAILED (remote: 'Flashing is not allowed in Lock State')")
            raise SimExit(1, "fastboot: error: Command failed")
        record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        kernel = kernel_from_image(data, partition) if partition.startswith("boot_") else None
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
        if state["mode"] == "fastbootd":
            _step("Booting", "FAILED (remote: 'Unrecognized command boot')")   # fastbootd has no 'boot'
            raise SimExit(1, "fastboot: error: Command failed")
        if not data.startswith(simimages.BOOT_MAGIC):
            _step("Booting", "FAILED (remote: 'invalid boot image')")
            raise SimExit(1, "fastboot: error: Command failed")
        if not state["unlocked"]:
            _step("Booting", "FAILED (remote: 'Boot is not allowed in Lock State')")
            raise SimExit(1, "fastboot: error: Command failed")
        boot_android(state, "image", data)
        state["last_one_off_boot_sha256"] = hashlib.sha256(data).hexdigest()
        sync_root(devdir, state)
        _step("Booting", "OKAY", 0.05)
    _err("Finished. Total time: 0.060s")
    return 0


def fastboot_reboot(devdir, args):
    with locked(devdir) as state:
        if args and args[0] == "bootloader":
            state["mode"] = "bootloader"
        elif args and args[0] == "fastboot":
            state["mode"] = "fastbootd"      # the same serial, now Android's userspace fastboot
            state["fastbootd_entries"] = state.get("fastbootd_entries", 0) + 1
        elif args:
            raise SimExit(1, f"pkvmlab-sim: fastboot reboot {args[0]} is not simulated")
        else:
            boot_android(state, "slot")
            sync_root(devdir, state)
    _err("Rebooting" + (f" into {args[0]}" if args else "") + "                                         OKAY")
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
