"""Protected VMs on an Android board: Microdroid through AVF's ``vm`` tool, and crosvm run directly.

Microdroid: ``vm run-microdroid --protected`` with the console and the VM's
logcat written to files on the device, pulled into ``<run dir>/microdroid/``.
The boot time is measured on the host from each output line's arrival: launch
to ``payload is ready``.  crosvm: ``crosvm run --protected-vm`` on AVF's
Microdroid kernel with no root file system; the guest is expected to get as far
as its kernel (pvmfw ran, the kernel printed its banner) and then stop.
"""

import shlex

import pytest
from avf_facts import (
    CROSVM,
    MICRODROID_KERNEL,
    VM,
    WORK_DIR,
    parse_guest_console,
    parse_vm_run,
    vm_cpu_args,
)

pytestmark = pytest.mark.board(console="adb")

VM_TIMEOUT = 120   # seconds the device lets a VM run (toybox timeout) before the host gives up


@pytest.fixture
def pvm_board(booted, board):
    if not board.expect.pvm:
        pytest.skip(f"board {board.name} expects no protected VMs (expect.pvm: false)")
    lines, code = booted.run(f"mkdir -p {WORK_DIR} && echo ok")
    assert code == 0 and lines == ["ok"], f"could not create {WORK_DIR}: {lines}"
    return booted


def _pull(session, remote, local):
    local.parent.mkdir(parents=True, exist_ok=True)
    session.target.get_driver("FileTransferProtocol").get(remote, str(local))
    return local.read_text(errors="replace")


def test_microdroid_protected_boot(pvm_board, measured):
    session = pvm_board
    help_lines, _ = session.run(f"{VM} run-microdroid --help")
    cpu = vm_cpu_args(help_lines)
    measured("cpu_args", cpu or "(none)")
    console, log = f"{WORK_DIR}/microdroid-console.txt", f"{WORK_DIR}/microdroid-logcat.txt"
    session.run(f"rm -f {console} {log}")
    command = (f"timeout {VM_TIMEOUT} {VM} run-microdroid --protected {cpu} "
               f"--console {console} --log {log}").replace("  ", " ")
    lines, code = session.command.run_timed(command, timeout=VM_TIMEOUT + 30)
    out_dir = session.run_dir / "microdroid"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vm-output.txt").write_text(
        f"$ {command}\n" + "".join(f"[{t:8.3f}s {stream}] {text}\n" for t, stream, text in lines) + f"exit {code}\n")
    console_text = _pull(session, console, out_dir / "console.txt")
    _pull(session, log, out_dir / "logcat.txt")
    run = parse_vm_run(lines)
    guest = parse_guest_console(console_text)
    measured("cid", run.cid)
    measured("guest_kernel", guest.kernel_release)
    if run.payload_ready_at is not None:
        measured("payload_ready_seconds", f"{run.payload_ready_at:.3f}")
    assert not run.errors, f"the VM reported errors: {run.errors} (see {out_dir})"
    assert run.cid is not None, f"vm run-microdroid created no VM (exit {code}; see {out_dir / 'vm-output.txt'})"
    assert guest.pvmfw, f"no '[INFO] pVM firmware' on the console: the VM did not boot through pvmfw ({out_dir})"
    assert guest.payload_handoff and guest.pvmfw_failure is None, (
        f"pvmfw did not start the payload ({guest.pvmfw_failure or 'no Starting payload... line'})")
    assert run.payload_ready_at is not None, f"the payload never said it was ready (see {out_dir})"


def test_crosvm_protected_vm(pvm_board, measured):
    session = pvm_board
    uid, _ = session.run("id -u")
    assert uid == ["0"], f"crosvm needs root (the board's ready state); the shell is uid {uid}"
    console = f"{WORK_DIR}/crosvm-console.txt"
    session.run(f"rm -f {console}")
    params = shlex.quote("panic=-1 console=ttyS0")
    command = (f"ulimit -l unlimited 2>/dev/null; timeout 60 {CROSVM} run --disable-sandbox --protected-vm "
               f"--mem 256 --cpus 1 --serial type=file,path={console},hardware=serial,console "
               f"--params {params} {MICRODROID_KERNEL}")
    stdout, stderr, code = session.command.run(command, timeout=90)
    out_dir = session.run_dir / "crosvm"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "crosvm-output.txt").write_text(
        f"$ {command}\n" + "\n".join(stdout + stderr) + f"\nexit {code}\n")
    errors = [line for line in stderr if "ERROR" in line or "error" in line.split(":", 1)[0]]
    if any("No such file or directory (os error 2)" in line and "protected" in line for line in errors):
        pytest.fail(f"crosvm --protected-vm failed with ENOENT: the bootloader loaded no pvmfw ({errors})")
    assert not errors, f"crosvm failed (exit {code}): {errors}"
    guest = parse_guest_console(_pull(session, console, out_dir / "console.txt"))
    measured("guest_kernel", guest.kernel_release)
    measured("hyp_services", guest.hyp_services)
    assert guest.pvmfw, "no '[INFO] pVM firmware' on the guest console: the VM did not start as a protected VM"
    assert guest.kernel_release, "the guest kernel never printed its banner"
    assert guest.guest_el in (None, "EL1"), f"a protected guest runs at EL1; its kernel says {guest.guest_el}"
