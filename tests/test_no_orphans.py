"""No orphans: whatever ends `pkvmlab run` (SIGKILL, SIGHUP, SIGTERM), its QEMU ends with it.

Each test starts a real `pkvmlab run` on a real QEMU board with a suite that
sleeps on the booted board, finds the harness's QEMU in /proc (a child of the
harness), signals the harness and checks that QEMU is gone within seconds and
that labgrid's temp dir of the run (``labgrid-qemu-tmp-*``, the console socket
named on QEMU's command line) does not stay: removed by the harness itself on
SIGTERM/SIGHUP, and by the next run after a SIGKILL (nothing of a SIGKILLed
process runs; ``pkvmlab.childproc`` says why that is the honest bound).
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boardrun import children

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.qemu

SLOW_SUITE = "def test_sleeps(booted):\n    booted.run('sleep 60', timeout=90)\n"


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, seconds, step=0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


# The guest floods its console while the host side of the test sleeps and reads nothing.
FLOOD_SUITE = ("import time\n\n\ndef test_floods(booted):\n"
               "    booted.run('(sleep 1; yes pkvmlab-flood) > /dev/console 2>&1 &')\n"
               "    print('flooding', flush=True)\n"
               "    time.sleep(60)\n")


def start_sleeping_run(tmp_path, board="qemu-virt", marker="sleep 60", timeout=120, suite_text=SLOW_SUITE):
    """Start `pkvmlab run` of a suite that sleeps on the board; return (harness, qemu pid, temp dir or None)."""
    suite = tmp_path / "test_sleeping.py"
    suite.write_text(suite_text)
    out = open(tmp_path / "harness-output.txt", "w")
    harness = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", board, "--reports",
                                str(tmp_path / "reports"), "--run-id", "x", str(suite), "-p", "no:cacheprovider"],
                               cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    log = tmp_path / "reports" / "x" / "console.log"

    def sleeping():
        return harness.poll() is not None or (log.exists() and marker in log.read_text(errors="replace"))
    wait_until(sleeping, timeout, 0.2)
    assert harness.poll() is None, (tmp_path / "harness-output.txt").read_text()[-3000:]
    qemus = {pid: cmd for pid, cmd in children(harness.pid).items() if "qemu-system" in cmd and "-serial" in cmd}
    if not qemus:   # the power switch's QEMU is a child of the harness too, started by its server thread
        harness.kill()
        harness.wait()
        pytest.fail(f"no QEMU child of the harness: {children(harness.pid)}")
    (pid, cmdline), = qemus.items()
    socket = re.search(r"path=(\S*/labgrid-qemu-tmp-[^/\s]+)/serialrw", cmdline)
    return harness, pid, Path(socket.group(1)) if socket else None


def end_harness(harness, sig, seconds=30):
    harness.send_signal(sig)
    try:
        return harness.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        harness.kill()
        harness.wait()
        pytest.fail(f"harness still running {seconds} s after {signal.Signals(sig).name}")


def kill_leftover(pid):
    """Do not let a failing test leave its own orphan behind."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_sigkill_of_harness_kills_qemu_and_next_run_removes_temp_dir(tmp_path):
    harness, qemu, tempdir = start_sleeping_run(tmp_path)
    assert tempdir is not None and tempdir.is_dir()
    try:
        end_harness(harness, signal.SIGKILL)
        assert wait_until(lambda: not alive(qemu), 5), f"QEMU {qemu} outlived the SIGKILLed harness"
    finally:
        kill_leftover(qemu)
    # Nothing of a SIGKILLed process runs, so its temp dir stays - provably its own - until the next run.
    assert (tempdir / ".pkvmlab-owner").is_file(), sorted(p.name for p in tempdir.iterdir())
    proc = subprocess.run([sys.executable, "-m", "pkvmlab.cli", "run", "--board", "qemu-virt", "--reports",
                           str(tmp_path / "reports"), "--run-id", "next", str(ROOT / "suites" / "boot"),
                           "-k", "reached_shell", "-p", "no:cacheprovider"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not tempdir.exists(), f"{tempdir} of the SIGKILLed run survived the next run"


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
def test_hangup_or_terminate_ends_qemu_and_removes_temp_dir(tmp_path, sig):
    harness, qemu, tempdir = start_sleeping_run(tmp_path)
    assert tempdir is not None and tempdir.is_dir()
    try:
        code = end_harness(harness, sig)
        assert code != -sig, f"the harness died of {signal.Signals(sig).name} instead of ending the run"
        assert wait_until(lambda: not alive(qemu), 5), f"QEMU {qemu} outlived the harness"
    finally:
        kill_leftover(qemu)
    assert not tempdir.exists(), f"{tempdir} stayed after {signal.Signals(sig).name}"
    assert (tmp_path / "reports" / "x" / "junit.xml").is_file()


def test_sigterm_while_nobody_reads_the_flooded_console_ends_in_seconds(tmp_path):
    """A full console socket stalls QEMU's QMP (its PL011 retries the write holding QEMU's lock): stopping
    QEMU must not wait for a QMP answer, or SIGTERM leaves a harness that never ends."""
    harness, qemu, tempdir = start_sleeping_run(tmp_path, marker="yes pkvmlab-flood", suite_text=FLOOD_SUITE)
    time.sleep(3)    # the console socket fills
    try:
        code = end_harness(harness, signal.SIGTERM, seconds=20)
        assert code != -signal.SIGTERM
        assert wait_until(lambda: not alive(qemu), 5), f"QEMU {qemu} outlived the harness"
    finally:
        kill_leftover(qemu)
    assert not tempdir.exists()


def test_sigkill_of_harness_kills_power_switch_qemu(tmp_path):
    """The U-Boot board: QEMU started by the power switch's server thread dies with the harness too."""
    harness, qemu, _ = start_sleeping_run(tmp_path, board="qemu-uboot")
    try:
        end_harness(harness, signal.SIGKILL)
        assert wait_until(lambda: not alive(qemu), 5), f"QEMU {qemu} outlived the SIGKILLed harness"
    finally:
        kill_leftover(qemu)


def test_sigkill_of_matrix_ends_its_cells_and_their_qemu(tmp_path):
    """A matrix's runs (its health check's boot, its cells) get SIGTERM when the matrix dies: each ends its run
    (JUnit marked interrupted) and its QEMU.  The cells are forked from the matrix's warm server
    (pkvmlab/cellserver.py), so a cell is a grandchild of the matrix."""
    matrix = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "matrix", "--kernels", "trixie-backports",
                               "--modes", "protected", "--jobs", "1", "--reports", str(tmp_path)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cell = qemu = None

    def booting():
        nonlocal cell, qemu
        for pid in [grandchild for child in children(matrix.pid) for grandchild in children(child)]:
            qemus = [q for q, cmd in children(pid).items() if "qemu-system" in cmd and "-serial" in cmd]
            if qemus:
                cell, qemu = pid, qemus[0]
                return True
        return matrix.poll() is not None
    try:
        assert wait_until(booting, 300, 0.1) and qemu is not None, "no cell QEMU seen"
        time.sleep(2)
        end_harness(matrix, signal.SIGKILL)
        # 15 s: the cell writes its JUnit file first, at nice +10 (it yields to its board), and with the tests
        # on two workers another module's boards may keep both cores busy (measured: over 5 s once).
        assert wait_until(lambda: not alive(cell) and not alive(qemu), 15), \
            f"cell {cell} alive: {alive(cell)}, its QEMU {qemu} alive: {alive(qemu)}, after the matrix died"
    finally:
        for pid in (cell, qemu):
            if pid is not None:
                kill_leftover(pid)
    # The killed run (the health check's boot or a cell) wrote its JUnit file, marked interrupted.
    junits = [path.read_text() for path in tmp_path.glob("matrix-*/**/junit.xml")]
    assert any('name="pkvmlab.interrupted" value="SIGTERM"' in text for text in junits), junits
