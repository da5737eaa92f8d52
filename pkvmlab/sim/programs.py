"""Programs on a simulated Pixel (see pixel.py): getprop, setprop, uname, id, dmesg, logcat, vm, crosvm, elprobe.

The fake root's ``/system/bin`` and ``/apex/com.android.virt/bin`` hold small
scripts that call back into ``pixel.py tool DEVDIR NAME``; this module is what
they run.  Outputs follow documented AVF/crosvm behaviour (notes/device-facts.md)
and, for ``elprobe``, a run recorded on the QEMU board.
"""

import json
import os
import sys
from pathlib import Path

from .device import (
    MODELS,
    SimExit,
    dmesg_lines,
    host_path,
    kvm_up,
    load_state,
    locked,
    microdroid_release,
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
