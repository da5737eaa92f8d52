"""The pkvmlab Pixel SIMULATOR's ``/apex/com.android.virt/bin/vm`` (see pixel.py), per Android version.

Subcommands and flags (from AOSP packages/modules/Virtualization
``vm/src/main.rs`` as shipped in LineageOS/android_packages_modules_Virtualization
``lineage-20.0`` (Android 13) and ``lineage-22.0`` (Android 15)):

- Android 13: ``run-app``, ``run``, ``stop <cid>``, ``list``, ``info``, ``create-partition``,
  ``create-idsig``; ``--cpus``, ``--cpu-affinity``, ``-d/--daemonize``, ``--task-profiles``;
  ``--debug none|app_only|full``, default none.  No ``run-microdroid``: it came with Android 14.
- Android 14 and 15: ``run-app``, ``run-microdroid``, ``run``, ``list``, ``info``,
  ``create-partition [-t raw|instance]``, ``create-idsig``, ``check-feature-enabled``; no ``stop``;
  ``--cpu-topology one_cpu|match_host``; ``--debug none|full``, default full.  Android 14 is given
  Android 15's set here [U].

A VM lives as long as the ``vm`` process that started it: the tool holds the VM's
binder object and waits for its death (``vm/src/run.rs``), and since Android 14 the
VM manager (virtmgr) is that client's own child and ends with it.  So a run is
stopped by ending the ``vm`` process (SIGTERM); Android 13's ``vm stop <cid>``
drops a daemonized VM.  ``run-microdroid`` with AOSP's default payload
(EmptyPayloadApp) never finishes: its payload pauses, and so does this one, until
it is killed (or, as a simulator safeguard, ``$PKVMLAB_PIXEL_SIM_VM_LIMIT`` real
seconds pass, default 600).  Told through the device state
(``microdroid.payload_exit_code: N``), the payload finishes with that code.
"""

import os
import signal
import struct
import sys
import time

from . import guest as simguest
from .device import (
    SimExit,
    firmware_hypervisor,
    hang_up_with_parent,
    host_path,
    kvm_up,
    load_state,
    locked,
    microdroid_release,
    properties,
    protected_kvm,
    sim_sleep,
)

ENV_VM_LIMIT = "PKVMLAB_PIXEL_SIM_VM_LIMIT"
_COMMON = {"--console": 1, "--log": 1, "--mem": 1, "-m": 1, "--protected": 0, "-p": 0, "--debug": 1,
           "--name": 1}
FLAGS = {
    13: {**_COMMON, "--cpus": 1, "--cpu-affinity": 1, "--daemonize": 0, "-d": 0, "--task-profiles": 1},
    15: {**_COMMON, "--cpu-topology": 1, "--hugepages": 0, "--boost-uclamp": 0, "--console-in": 1,
         "--gdb": 1, "--vendor": 1, "--devices": 1, "--gki": 1, "--work-dir": 1, "--storage": 1,
         "--storage-size": 1},
}
SUBCOMMANDS = {
    13: ("run-app", "run", "stop", "list", "info", "create-partition", "create-idsig"),
    15: ("run-app", "run-microdroid", "run", "list", "info", "create-partition", "create-idsig",
         "check-feature-enabled"),
}


def _version(state):
    return 13 if state["android_version"] <= 13 else 15


def parse_flags(flags, args, tool):
    """(values {flag: [value...] or True}, positional) as clap would, refusing flags the tool lacks."""
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


def _help(state, sub=None):
    version = _version(state)
    if sub is None:
        print("Android VM Tool\n\nUsage: vm <COMMAND>\n\nCommands:")
        for name in SUBCOMMANDS[version]:
            print(f"  {name}")
        print("  help  Print this message or the help of the given subcommand(s)")
        return 0
    print(f"Usage: vm {sub} [OPTIONS]\n\nOptions:")
    for flag, takes in sorted(FLAGS[version].items()):
        if flag.startswith("--") and flag != "--debug":
            print(f"      {flag}" + (" <VALUE>" if takes else ""))
    if version == 13:
        print("      --debug <DEBUG>  Debug level of the VM [default: none] [possible values: none, app_only, full]")
    else:
        print("      --debug <DEBUG>  Debug level of the VM [default: full] [possible values: none, full]")
    print("  -h, --help  Print help")
    return 0


def _unknown_subcommand(state, sub):
    if _version(state) == 13:   # structopt / clap 2 wording [U]
        raise SimExit(1, f"error: Found argument '{sub}' which wasn't expected, or isn't valid in this context\n\n"
                         "USAGE:\n    vm <SUBCOMMAND>\n\nFor more information try --help")
    raise SimExit(2, f"error: unrecognized subcommand '{sub}'\n\nUsage: vm <COMMAND>\n\n"
                     "For more information, try '--help'.")


def _info(state):
    protected, up = protected_kvm(state), kvm_up(state)
    props = properties(state)
    other = firmware_hypervisor(state) is not None   # Gunyah, GenieZone: protected VMs only [U]
    if other:
        print("Only protected VMs are supported.")
    elif state["android_version"] <= 13 and up:
        print("Both protected and unprotected VMs are supported." if protected else
              "Only unprotected VMs are supported.")   # A13 wording [U]
    elif up:
        print("Both protected and non-protected VMs are supported." if protected else
              "Only non-protected VMs are supported.")
    else:
        print("VMs are not supported.")
    if "ro.boot.hypervisor.version" in props:
        print(f"Hypervisor version: {props['ro.boot.hypervisor.version']}")
    if up:
        print("/dev/kvm exists.")
    if state["android_version"] >= 14:
        print("Assignable devices: []")
    if state["android_version"] >= 15:
        print('Available OS list: ["microdroid"]')
    return 0


def _alive(pid):
    try:
        with open(f"/proc/{int(pid)}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def running_vms(devdir):
    """{cid: record} of the VMs whose vm process still runs (what virtualizationservice would list)."""
    with locked(devdir) as state:
        vms = state.setdefault("vms", {})
        for cid in [cid for cid, vm in vms.items() if not _alive(vm["pid"])]:
            del vms[cid]
        return dict(vms)


def _list(devdir):
    vms = running_vms(devdir)
    if not vms:
        print("Running VMs: []")
        return 0
    # Rust's {:#?} of the VirtualMachineDebugInfo list (vm/src/main.rs command_list)
    print("Running VMs: [")
    for cid, vm in sorted(vms.items()):
        print(f"    VirtualMachineDebugInfo {{\n        cid: {cid},\n        temporaryDirectory: "
              f"\"/data/misc/virtualizationservice/{cid}\",\n        requesterUid: {vm['uid']},\n"
              f"        requesterPid: {vm['pid']},\n    }},")
    print("]")
    return 0


def _stop(devdir, args):
    vms = running_vms(devdir)
    if len(args) != 1 or args[0] not in vms:
        raise SimExit(1, "Error: CID does not correspond to a running background VM")
    os.kill(vms[args[0]]["pid"], signal.SIGTERM)
    return 0


def _create_partition(devdir, state, args):
    values, positional = parse_flags({"-t": 1, "--type": 1}, args, "vm create-partition")
    kind = (values.get("--type") or values.get("-t") or ["raw"])[-1]
    if len(positional) != 2 or kind not in ("raw", "instance"):
        raise SimExit(2, "error: usage: vm create-partition [--type raw|instance] <PATH> <SIZE>")
    path = host_path(devdir, positional[0])
    if path.exists():
        raise SimExit(1, f"Error: Failed to create \"{positional[0]}\": File exists (os error 17)")
    with open(path, "wb") as image:
        image.truncate(int(positional[1]))
        if kind == "instance":
            # virtualizationservice's format_as_android_vm_instance(): magic then version 1 (little endian)
            image.write(simguest.INSTANCE_MAGIC + struct.pack("<H", 1))
    return 0


def tool_vm(devdir, args):
    state = load_state(devdir)
    if not args or args[0] in ("-h", "--help", "help"):
        return _help(state)
    sub, rest = args[0], args[1:]
    if sub not in SUBCOMMANDS[_version(state)]:
        _unknown_subcommand(state, sub)
    if "--help" in rest or "-h" in rest:
        return _help(state, sub)
    if sub == "info":
        return _info(state)
    if sub == "list":
        return _list(devdir)
    if sub == "stop":
        return _stop(devdir, rest)
    if sub == "create-partition":
        return _create_partition(devdir, state, rest)
    if sub == "run-microdroid":
        return _run_microdroid(devdir, state, rest)
    raise SimExit(2, f"pkvmlab-sim: vm {sub} is not simulated")


def _run_microdroid(devdir, state, args):
    hang_up_with_parent()     # a device shell that forked us may go first: we go with it
    values, _ = parse_flags(FLAGS[_version(state)], args, "vm run-microdroid")
    protected = bool(values.get("--protected") or values.get("-p"))
    debug = values.get("--debug", ["full"])[-1]
    if protected and not protected_kvm(state):
        raise SimExit(1, "Error: Failed to create VM: protected VMs are not supported on this device")
    if not kvm_up(state):
        raise SimExit(1, "Error: Failed to create VM: VMs are not supported on this device")
    with locked(devdir) as live:
        cid = live["next_cid"]
        live["next_cid"] += 1
        live.setdefault("vms", {})[str(cid)] = {"pid": os.getpid(), "uid": 0 if live["adb_root"] else 2000,
                                                "protected": protected, "name": "microdroid"}
        payload_exit = (live.get("microdroid") or {}).get("payload_exit_code")
    work = "/data/local/tmp/microdroid/pkvmsim-" + str(cid)
    host_path(devdir, work).mkdir(parents=True, exist_ok=True)
    console_file = values.get("--console", [None])[-1]
    log_file = values.get("--log", [None])[-1]
    out = sys.stdout

    def say(text, stream=out):
        print(text, file=stream, flush=True)

    apk = "/apex/com.android.virt/app/EmptyPayloadApp/EmptyPayloadApp.apk"
    say(f"found path {apk}")
    say(f"creating work dir {work}")
    say(f"apk.idsig path: {work}/apk.idsig")
    say(f"instance.img path: {work}/instance.img")
    say(f"Created {'debuggable VM' if debug != 'none' else 'VM'} from {apk} with CID {cid}, state is STARTING.")
    console = open(console_file, "w") if console_file else out   # noqa: SIM115 - closed below
    log = open(log_file, "w") if log_file else out   # noqa: SIM115
    try:
        if protected:
            if not state.get("pvmfw_loaded", True):
                say("VM encountered an error: code=PVM_FIRMWARE_MISSING, message=pvmfw not loaded", sys.stderr)
                say("VM ended: Error", sys.stderr)
                return 1
            # virtmgr passes what pvmfw checks the right way: kernel, the initrd for the debug level, instance.img
            say("[INFO] pVM firmware", console)
            sim_sleep(0.05)
            say("[INFO] Starting payload...", console)
        for stamp, text in simguest.guest_kernel_lines(microdroid_release(state), protected):
            say(f"[{stamp:12.6f}] {text}", console)
        sim_sleep(0.2)
        say("payload started", sys.stderr)
        say("01-01 00:00:01.500   300   300 I microdroid_manager: payload started", log)
        say("01-01 00:00:01.600   300   300 I adbd    : adbd listening on vsock:5555", log)
        sim_sleep(0.1)
        say("01-01 00:00:01.700   310   310 I vm_payload: Notified host payload ready successfully", log)
        say("payload is ready", sys.stderr)
        if payload_exit is None:
            _pause_until_killed()
        sim_sleep(0.05)
        say(f"payload finished with exit code {int(payload_exit)}", sys.stderr)
        say("VM ended: Shutdown", sys.stderr)
    finally:
        for stream in (console, log):
            if stream is not out:
                stream.close()
    return 0


def _pause_until_killed():
    """AOSP's empty payload pauses: the VM runs until its vm process is ended."""
    limit = float(os.environ.get(ENV_VM_LIMIT, "600"))
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"pkvmlab-sim: the VM was never stopped; giving up after {limit:g} s (a real one runs on)",
          file=sys.stderr, flush=True)
    raise SimExit(124)
