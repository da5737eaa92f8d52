"""Protected VMs on an Android board: Microdroid through AVF's ``vm`` tool, and crosvm run directly.

Microdroid: ``vm run-microdroid --protected`` with the console and the VM's
logcat written to files on the device.  With AOSP's default payload the VM
never ends by itself, so the harness watches the tool's output, and once the
payload is ready lists the running VMs (its CID must be there), ends the ``vm``
process (the VM lives as long as it does; ``vm/src/run.rs``), and checks the CID
is gone.  The files land in ``<run dir>/microdroid/``.

crosvm: ``crosvm run --protected-vm`` the way pvmfw accepts a payload: AVF's
Microdroid kernel with the debuggable initrd its vbmeta describes, and a disk
holding the ``vm-instance`` partition pvmfw keeps its state in (instance_img.py).
Where the bootloader loaded no pvmfw (crosvm: ENOENT), the run is repeated in
crosvm's explicit no-firmware protected mode and reported as such.  The guest
gets as far as its initrd's init, which finds no Microdroid disks and reboots;
the guest's EL and the hypervisor services it sees are recorded.
"""

import shlex
import time

import pytest
from avf_facts import (
    CROSVM,
    MICRODROID_INITRD,
    MICRODROID_KERNEL,
    PKVM_GUEST_SERVICES,
    VM,
    WORK_DIR,
    parse_guest_console,
    parse_vm_list,
    parse_vm_run,
    parse_vm_subcommands,
    vm_cpu_args,
)
from instance_img import instance_disk

pytestmark = pytest.mark.board(console="adb")

READY_TIMEOUT = 90   # seconds from launch for 'payload is ready' before the harness stops the VM anyway
STOP_TIMEOUT = 20    # seconds for the vm tool to end once told to
CROSVM_TIMEOUT = 60  # seconds the device lets crosvm run (toybox timeout) before the host gives up
PID_MARK = "pkvmlab-vm-pid="


@pytest.fixture
def pvm_board(booted, board, firmware_hypervisor):
    if firmware_hypervisor is not None:
        pytest.skip(f"{firmware_hypervisor.describe()}: protected VMs here are that hypervisor's, not pKVM's")
    if not board.expect.pvm:
        pytest.skip(f"board {board.name} expects no protected VMs (expect.pvm: false)")
    lines, code = booted.run(f"mkdir -p {WORK_DIR} && echo ok")
    assert code == 0 and lines == ["ok"], f"could not create {WORK_DIR}: {lines}"
    return booted


def _pull(session, remote, local):
    local.parent.mkdir(parents=True, exist_ok=True)
    session.target.get_driver("FileTransferProtocol").get(remote, str(local))
    return local.read_text(errors="replace")


class VmStopper:
    """Watches a ``vm run-*`` as its lines arrive; stops it once the payload is ready (or too late)."""

    def __init__(self, session):
        self.session = session
        self.pid = None
        self.listed = None         # CIDs 'vm list' showed while the VM ran
        self.stopped_at = None
        self.reason = None

    def __call__(self, seconds, stream, text):
        if text is not None and text.startswith(PID_MARK):
            self.pid = text[len(PID_MARK):].strip()
        if self.stopped_at is not None:
            return
        if text is not None and text.strip() == "payload is ready":
            self.stop(seconds, "payload ready")
        elif seconds > READY_TIMEOUT:
            self.stop(seconds, f"no 'payload is ready' within {READY_TIMEOUT} s")

    def stop(self, seconds, reason):
        self.reason = reason
        self.stopped_at = seconds
        lines, _ = self.session.run(f"{VM} list")
        self.listed = parse_vm_list(lines)
        if self.pid and self.pid.isdigit():
            self.session.run(f"kill -TERM {self.pid}")


def test_microdroid_protected_boot(pvm_board, measured):
    session = pvm_board
    top_help, _ = session.run(f"{VM} --help")
    subcommands = parse_vm_subcommands(top_help)
    if "run-microdroid" not in subcommands:
        pytest.skip(f"this Android's vm has no run-microdroid (it offers: {', '.join(subcommands)}); "
                    "Microdroid runs need Android 14 or newer")
    help_lines, _ = session.run(f"{VM} run-microdroid --help")
    cpu = vm_cpu_args(help_lines)
    measured("cpu_args", cpu or "(none)")
    console, log = f"{WORK_DIR}/microdroid-console.txt", f"{WORK_DIR}/microdroid-logcat.txt"
    session.run(f"rm -f {console} {log}")
    # The shell prints its PID and becomes the vm tool: that is the process to end.
    command = (f"echo {PID_MARK}$$; exec {VM} run-microdroid --protected {cpu} "
               f"--console {console} --log {log}").replace("  ", " ")
    stopper = VmStopper(session)
    lines, code = session.command.run_timed(command, timeout=READY_TIMEOUT + STOP_TIMEOUT, watch=stopper)
    after, _ = session.run(f"{VM} list")
    out_dir = session.run_dir / "microdroid"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vm-output.txt").write_text(
        f"$ {command}\n" + "".join(f"[{t:8.3f}s {stream}] {text}\n" for t, stream, text in lines) +
        f"exit {code}\n" + f"stopped by pkvmlab at {stopper.stopped_at} s ({stopper.reason}); vm list then: "
        f"{stopper.listed}; after: {parse_vm_list(after)}\n")
    console_text = _pull(session, console, out_dir / "console.txt")
    _pull(session, log, out_dir / "logcat.txt")
    run = parse_vm_run(lines)
    guest = parse_guest_console(console_text)
    ended_at = lines[-1][0] if lines else None
    measured("cid", run.cid)
    measured("guest_kernel", guest.kernel_release)
    measured("debuggable", run.debuggable)
    measured("stopped", f"{stopper.reason} at {stopper.stopped_at:.3f} s: SIGTERM to vm (pid {stopper.pid})"
             if stopper.stopped_at is not None else f"ended by itself ({run.ended})")
    if run.payload_ready_at is not None:
        measured("payload_ready_seconds", f"{run.payload_ready_at:.3f}")
    assert not run.errors, f"the VM reported errors: {run.errors} (see {out_dir})"
    assert run.cid is not None, f"vm run-microdroid created no VM (exit {code}; see {out_dir / 'vm-output.txt'})"
    assert guest.pvmfw, f"no '[INFO] pVM firmware' on the console: the VM did not boot through pvmfw ({out_dir})"
    assert guest.payload_handoff and guest.pvmfw_failure is None, (
        f"pvmfw did not start the payload ({guest.pvmfw_failure or 'no Starting payload... line'})")
    assert run.payload_started_at is not None, f"the payload never started (see {out_dir})"
    assert run.payload_ready_at is not None, f"the payload never said it was ready (see {out_dir})"
    assert stopper.listed is not None and run.cid in stopper.listed, (
        f"CID {run.cid} not in 'vm list' while the VM ran (listed: {stopper.listed})")
    assert run.cid not in parse_vm_list(after), f"CID {run.cid} still in 'vm list' after the vm tool was ended"
    assert ended_at is not None and ended_at - stopper.stopped_at < STOP_TIMEOUT, (
        f"the vm tool did not end within {STOP_TIMEOUT} s of SIGTERM")


def _crosvm(session, mode, console, instance, params):
    command = (f"ulimit -l unlimited 2>/dev/null; timeout {CROSVM_TIMEOUT} {CROSVM} run --disable-sandbox {mode} "
               f"--mem 256 --cpus 1 --serial type=file,path={console},hardware=serial,console --params {params} "
               f"--initrd {MICRODROID_INITRD['full']} --block path={instance} {MICRODROID_KERNEL}")
    session.run(f"rm -f {console}")
    started = time.monotonic()
    stdout, stderr, code = session.command.run(command, timeout=CROSVM_TIMEOUT + 30)
    return command, stdout, stderr, code, time.monotonic() - started


def _crosvm_errors(stderr):
    return [line for line in stderr if "ERROR" in line or "error" in line.split(":", 1)[0]]


def test_crosvm_protected_vm(pvm_board, measured):
    session = pvm_board
    uid, _ = session.run("id -u")
    assert uid == ["0"], f"crosvm needs root (the board's ready state); the shell is uid {uid}"
    out_dir = session.run_dir / "crosvm"
    out_dir.mkdir(parents=True, exist_ok=True)
    local_instance = out_dir / "instance.img"
    local_instance.write_bytes(instance_disk())
    instance, console = f"{WORK_DIR}/crosvm-instance.img", f"{WORK_DIR}/crosvm-console.txt"
    session.target.get_driver("FileTransferProtocol").put(str(local_instance), instance)
    params = shlex.quote("panic=-1 console=ttyS0")
    mode = "--protected-vm"
    command, stdout, stderr, code, seconds = _crosvm(session, mode, console, instance, params)
    transcript = f"$ {command}\n" + "\n".join(stdout + stderr) + f"\nexit {code}\n"
    errors = _crosvm_errors(stderr)
    no_pvmfw = [line for line in errors if "No such file or directory (os error 2)" in line and "protected" in line]
    if no_pvmfw:
        # The bootloader loaded no pvmfw: crosvm's explicit no-firmware protected mode, reported as such.
        mode = "--protected-vm-without-firmware"
        command, stdout, stderr, code, seconds = _crosvm(session, mode, console, instance, params)
        transcript += f"\n$ {command}\n" + "\n".join(stdout + stderr) + f"\nexit {code}\n"
        errors = _crosvm_errors(stderr)
    (out_dir / "crosvm-output.txt").write_text(transcript)
    measured("protection", mode + (f" (--protected-vm: {no_pvmfw[0].strip()}: the bootloader loaded no pvmfw)"
                                   if no_pvmfw else ""))
    measured("seconds", f"{seconds:.3f}")
    assert not errors, f"crosvm failed (exit {code}): {errors}"
    guest = parse_guest_console(_pull(session, console, out_dir / "console.txt"))
    measured("guest_kernel", guest.kernel_release)
    measured("guest_el", guest.guest_el)
    measured("hyp_services", guest.hyp_services)
    measured("hypercalls", ", ".join(guest.services) or "(none detected)")
    if mode == "--protected-vm":
        measured("pvmfw", guest.pvmfw_failure or "accepted: kernel + initrd_debug + vm-instance disk")
        assert guest.pvmfw, "no '[INFO] pVM firmware' on the guest console: the VM did not start as a protected VM"
        assert guest.pvmfw_failure is None, f"pvmfw refused the payload: {guest.pvmfw_failure}"
        assert guest.payload_handoff, "pvmfw never said 'Starting payload...'"
    assert guest.kernel_release, "the guest kernel never printed its banner"
    assert guest.guest_el == "EL1", f"a protected guest runs at EL1; its kernel says {guest.guest_el}"
    missing = [name for name in PKVM_GUEST_SERVICES if name not in guest.services]
    assert not missing, (f"the protected guest does not see the pKVM guest services {missing} "
                         f"(hypervisor services: {guest.hyp_services})")
