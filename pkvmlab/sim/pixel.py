"""SIMULATOR of Pixel phones for pkvmlab's own tests: fake ``adb`` and ``fastboot``, not real ones.

Nothing here talks to a phone.  This module stands in for the ``adb`` and
``fastboot`` programs (through ``pkvmlab/sim/bin/adb`` and ``.../fastboot``) so
pkvmlab's real ADB driver, fastboot flashing and Android strategy can run end
to end without a phone.  What the fake tools print is taken from documented
Pixel/AVF behaviour (AOSP packages/modules/Virtualization,
https://android.googlesource.com/platform/packages/modules/Virtualization/: ``vm info`` lines, run-microdroid
output, pvmfw console markers, the kernel's EL and KVM lines, fastboot's
``getvar`` replies); where a detail is unconfirmed ([U]) the text
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

Layout: this file is the entry point (``adb``/``fastboot``/``tool``/``sim``
dispatch and the ``sim`` admin command); ``device.py`` is the simulated phone
(state, kernel, properties, fake root), ``adbsim.py`` and ``fastbootsim.py`` the
two tools, ``programs.py`` what runs on the device, ``images.py`` the fake image
set.  Only the standard library: the wrappers run it with any python3.
"""

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (``python3 pkvmlab/sim/pixel.py sim init``, as docs/pixel.md says): import the package
    # from the checkout this file is in, then hand over to the module so the relative imports below work.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import runpy
    runpy.run_module("pkvmlab.sim.pixel", run_name="__main__", alter_sys=True)
    sys.exit(0)   # not reached: the module's __main__ block exits

from .adbsim import adb_main  # noqa: F401, E402
from .device import (  # noqa: F401, E402
    DEFAULT_SERIAL,
    ENV_DIR,
    ENV_TIME_SCALE,
    ENV_WAIT,
    MODELS,
    SimExit,
    create_device,
    device_dirs,
    load_state,
    locked,
    save_state,
    sim_dir,
)
from .fastbootsim import fastboot_main  # noqa: F401, E402
from .programs import ELPROBE_RECORDING, tool_main  # noqa: F401, E402

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
                    node = node.setdefault(part, {})
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
