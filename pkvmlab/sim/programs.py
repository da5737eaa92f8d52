"""Programs on a simulated Pixel (see pixel.py): getprop, setprop, uname, id, dmesg, logcat, elprobe.

The fake root's ``/system/bin`` and ``/apex/com.android.virt/bin`` hold small
scripts that call back into ``pixel.py tool DEVDIR NAME``; this module is what
they run (``vm`` is vmtool.py, ``crosvm`` crosvmsim.py).  Outputs follow
documented AVF/crosvm behaviour (AOSP packages/modules/Virtualization,
https://android.googlesource.com/platform/packages/modules/Virtualization/; google/crosvm) and, for ``elprobe``, a
run recorded on the QEMU board.
"""

import json
import os
from pathlib import Path

from .device import (
    MODELS,
    SimExit,
    dmesg_lines,
    kvm_up,
    load_state,
    locked,
    properties,
    protected_kvm,
    sim_sleep,
    to_device_text,
)

ELPROBE_RECORDING = Path(__file__).resolve().parent / "elprobe-protected.jsonl"
EM_AARCH64 = 183

# ------------------------------------------------------------------------------------- device programs


def tool_main(devdir, name, args):
    devdir = Path(devdir)
    from .crosvmsim import tool_crosvm
    from .vmtool import tool_vm
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


GUEST_PATTERN = "0x706b766d454c5052"   # what the probe's guest writes ('pkvmELPR'), images/elprobe/elprobe.c


def _teardown_leak(record):
    """The protected VM's teardown checks as they read under QEMU 7.2's protected hVHE (README, Known emulator
    artifacts): the guest-written data page still holds the guest's pattern after teardown."""
    if record.get("record") != "result" or record.get("vm") != "protected":
        return record
    if record.get("probe") == "teardown":
        record.update(content="guest_pattern", content_later="guest_pattern", first_qword=GUEST_PATTERN)
    elif record.get("probe") == "teardown_min":
        record.update(content="guest_pattern", private_data="guest_pattern", shared_data="guest_pattern")
    return record


def elprobe_recording(release, teardown_leak=False):
    """The recorded probe output (comment lines dropped), its start record's uname.release set to ``release``.

    The recording is QEMU 10.0.2's, where every check passes.  ``teardown_leak`` (fault
    ``faults.elprobe_teardown_leak``) replays the teardown finding measured on QEMU 7.2 instead.
    """
    lines = []
    for line in ELPROBE_RECORDING.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        record = json.loads(line)
        if record.get("record") == "start" and isinstance(record.get("uname"), dict):
            record["uname"]["release"] = release
        if teardown_leak:
            record = _teardown_leak(record)
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
    recording = elprobe_recording(state["kernel"]["release"], state["faults"].get("elprobe_teardown_leak", False))
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
