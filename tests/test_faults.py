"""Real faults, injected into real runs: each asserts the class, the one-line message and the exit code.

The failure classes and their exit codes are pkvmlab.outcome's (README, "Exit
codes"): board finding 1, configuration 10, infrastructure 11, harness 13,
interrupted 14.  Every JUnit file is validated against junit-10.xsd as it is
read back.  Each test here failed on main before the failure taxonomy (the
message it asserts did not exist, or the exit code was 1/2 for everything).
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from boardrun import ROOT, SCHEMA, board_variant, parse_junit, pkvmlab, qemu_children, start_run, wait_for_console

pytestmark = pytest.mark.qemu


def write_suite(tmp_path, text, name="test_inject.py"):
    path = tmp_path / "suite" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def run_suite(tmp_path, suite, *extra, board="qemu-virt"):
    proc = pkvmlab("run", "--board", str(board), "--reports", str(tmp_path / "reports"), "--run-id", "run",
                   *extra, str(suite))
    return proc, tmp_path / "reports" / "run"


def parse_junit_root(path):
    SCHEMA.validate(str(path))
    import xml.etree.ElementTree as ET
    return ET.parse(path).getroot()


def output(proc):
    return (proc.stdout or "")[-3000:] + (proc.stderr or "")[-2000:]


def test_panic_mid_suite_is_a_board_finding_named_by_its_panic_line(tmp_path):
    suite = write_suite(tmp_path, "def test_panics(booted):\n"
                                  "    booted.run('echo c > /proc/sysrq-trigger', timeout=20)\n\n"
                                  "def test_after(booted):\n    booted.run('true')\n")
    proc, run_dir = run_suite(tmp_path, suite)
    assert proc.returncode == 1, output(proc)
    _, _, cases = parse_junit(run_dir / "junit.xml")
    failure = cases["test_panics"].find("failure")
    assert failure.get("type") == "pkvmlab.board"
    assert failure.get("message") == "kernel panic: Kernel panic - not syncing: sysrq triggered crash"
    # The next test names the same first cause, not "Broken pipe".
    assert "kernel panic: Kernel panic - not syncing" in cases["test_after"].find("failure").get("message")
    # The terminal's short summary says the class and the first cause too.
    assert "test_panics - [board] kernel panic: " in proc.stdout


def test_garbage_on_the_console_fails_no_test_and_stays_with_its_test(tmp_path):
    # test_noise makes the board print 8 KB of random bytes and, a moment later (while the harness
    # is not reading), a marker line; test_reads then fails on purpose, so its console excerpt shows
    # what it was charged with: neither the noise nor the marker belongs to it.
    suite = write_suite(tmp_path, "import time\n\n"
                                  "def test_noise(booted):\n"
                                  "    booted.run('head -c 8192 /dev/urandom > /dev/console; "
                                  "(sleep 0.3; echo LATE-NOISE-MARK > /dev/console) &')\n"
                                  "    time.sleep(1.5)\n\n"
                                  "def test_reads(booted):\n"
                                  "    lines, code = booted.run('echo ok')\n"
                                  "    assert (lines[-1], code) == ('ok', 0)\n"
                                  "    assert False, 'told to fail'\n")
    proc, run_dir = run_suite(tmp_path, suite)
    assert proc.returncode == 1, output(proc)
    _, _, cases = parse_junit(run_dir / "junit.xml")
    assert cases["test_noise"].find("failure") is None and cases["test_noise"].find("error") is None
    failure = cases["test_reads"].find("failure")
    assert failure.get("message") == "told to fail", failure.get("message")
    excerpt = cases["test_reads"].find("system-out").text
    assert "echo ok" in excerpt and "LATE-NOISE-MARK" not in excerpt
    assert "LATE-NOISE-MARK" in (run_dir / "console.log").read_text(errors="replace")
    assert "UnicodeDecodeError" not in proc.stdout


def test_sigterm_during_boot_marks_the_run_interrupted_in_junit_and_history(tmp_path):
    suite = write_suite(tmp_path, "def test_boots(booted):\n    pass\n")
    proc = start_run(tmp_path / "reports", suite)
    log = tmp_path / "reports" / "run" / "console.log"
    assert wait_for_console(log, "Booting Linux"), "the board never started booting"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 14, out[-3000:]
    suite_el, props, cases = parse_junit(tmp_path / "reports" / "run" / "junit.xml")
    error = cases["test_boots"].find("error")
    assert error.get("type") == "pkvmlab.interrupted"
    assert error.get("message") == f"interrupted by SIGTERM while running {suite}::test_boots"
    assert props["pkvmlab.interrupted"] == "SIGTERM"
    with sqlite3.connect(tmp_path / "reports" / "history.sqlite") as db:
        interrupted, errors, passed = db.execute("SELECT interrupted, errors, passed FROM runs").fetchone()
    assert (interrupted, errors, passed) == ("SIGTERM", 1, 0)
    html = (tmp_path / "reports" / "run" / "report.html").read_text()
    assert "interrupted by SIGTERM" in html


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_sigint_and_sighup_mid_test_say_which_signal(tmp_path, sig):
    suite = write_suite(tmp_path, "def test_first(booted):\n    pass\n\n"
                                  "def test_sleeps(booted):\n    booted.run('sleep 60', timeout=90)\n")
    proc = start_run(tmp_path / "reports", suite)
    assert wait_for_console(tmp_path / "reports" / "run" / "console.log", "sleep 60")
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 14, out[-3000:]
    _, props, cases = parse_junit(tmp_path / "reports" / "run" / "junit.xml")
    assert cases["test_first"].find("error") is None
    error = cases["test_sleeps"].find("error")
    assert (error.get("type"), error.get("message")) == (
        "pkvmlab.interrupted", f"interrupted by {sig.name} while running {suite}::test_sleeps")
    assert props["pkvmlab.interrupted"] == sig.name


def test_qemu_killed_mid_boot_is_infrastructure_not_a_broken_strategy(tmp_path):
    suite = write_suite(tmp_path, "def test_one(booted):\n    pass\n\ndef test_two(booted):\n    pass\n")
    proc = start_run(tmp_path / "reports", suite)
    assert wait_for_console(tmp_path / "reports" / "run" / "console.log", "Booting Linux")
    for pid in qemu_children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 11, out[-3000:]
    _, _, cases = parse_junit(tmp_path / "reports" / "run" / "junit.xml")
    messages = {name: case.find("error").get("message") for name, case in cases.items()}
    assert messages["test_one"].startswith("QEMU died "), messages
    assert "into the boot (exit code -9)" in messages["test_one"]
    assert messages["test_two"] == messages["test_one"]
    summary = [line for line in out.splitlines() if line.startswith("ERROR ")]
    assert len(summary) == 2 and all("[infrastructure] QEMU died " in line for line in summary), summary


def test_qemu_killed_mid_boot_is_retried_when_the_board_allows_and_recorded(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {"boot_timeout: 60": "boot_timeout: 60\nboot_retries: 1"})
    suite = write_suite(tmp_path, "def test_one(booted):\n    pass\n")
    proc = start_run(tmp_path / "reports", suite, board=board)
    log = tmp_path / "reports" / "run" / "console.log"
    assert wait_for_console(log, "Booting Linux")
    for pid in qemu_children(proc.pid):
        os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    _, props, cases = parse_junit(tmp_path / "reports" / "run" / "junit.xml")
    assert len(cases) == 1 and cases["test_one"].find("error") is None     # one verdict, not one per attempt
    assert props["pkvmlab.boot_attempts"] == "2"
    attempts = json.loads((tmp_path / "reports" / "run" / "boot_attempts.json").read_text())
    assert [a["class"] for a in attempts] == ["infrastructure", None]
    assert attempts[0]["message"].startswith("QEMU died ")
    assert "pkvmlab: boot attempt 1 failed (infrastructure: QEMU died " in out
    assert "=== pkvmlab: boot attempt 2 ===" in log.read_text(errors="replace")


def test_matrix_on_a_board_that_fails_its_health_check_skips_every_cell(tmp_path):
    """Every cell's boot is the health check: the first that fails for the lab's reasons is reported with its
    error, the matrix stops, and every other cell is reported skipped with that first cause."""
    board = board_variant(tmp_path, "qemu-virt", {}, env_replace={"-no-reboot": "-no-reboot -bogus"})
    started = time.monotonic()
    proc = pkvmlab("matrix", "--board", str(board), "--kernels", "trixie-backports", "--modes", "protected,nvhe",
                   "--reports", str(tmp_path / "reports"))
    assert proc.returncode == 11, output(proc)
    assert time.monotonic() - started < 60      # one failed start, not one per cell
    (matrix_dir,) = [d for d in (tmp_path / "reports").iterdir() if d.name.startswith("matrix-")]
    root = parse_junit_root(matrix_dir / "junit.xml")
    skipped = [s.get("message") for s in root.iter("skipped")]
    why = "qemu-virt failed its health check (infrastructure: QEMU exited at start (code 1): " \
          "qemu-system-aarch64: -bogus: invalid option)"
    assert skipped == [f"not run: {why}"], skipped
    # The cell that failed to boot: each of its tests errs with that first cause.
    errors = {(e.get("type"), e.get("message")) for e in root.iter("error")}
    assert errors == {("pkvmlab.infrastructure", "QEMU exited at start (code 1): qemu-system-aarch64: -bogus: "
                                                 "invalid option")}, errors
    assert "**qemu-virt failed its health check**: it did not boot in trixie-backports-" in \
        (matrix_dir / "matrix.md").read_text()


def test_env_file_that_is_not_yaml_is_one_line_naming_file_and_line(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {}, env_replace={"targets:": "targets: [\n  oops"})
    proc = pkvmlab("run", "--board", str(board), "--reports", str(tmp_path / "reports"))
    assert proc.returncode == 10, output(proc)
    env = tmp_path / "boards" / "env.yaml"
    assert f"pkvmlab: configuration error: {env}:" in proc.stderr
    assert "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "INTERNALERROR" not in proc.stdout
    assert not (tmp_path / "reports").exists() or list((tmp_path / "reports").iterdir()) == []


def test_reports_directory_that_cannot_be_written_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    proc = pkvmlab("run", "--board", "qemu-virt", "--reports", str(blocker / "reports"),
                   str(ROOT / "suites" / "boot"))
    assert proc.returncode == 11, output(proc)
    assert f"pkvmlab: infrastructure error: InfrastructureError: reports directory {blocker / 'reports'} " \
           f"cannot be written: Not a directory" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "INTERNALERROR" not in proc.stdout


@pytest.mark.parametrize("size", ["16k", "64k"])
def test_full_reports_disk_is_one_line_and_leaves_no_partial_junit(tmp_path, size):
    # 16 KB fills during the boot (console log, journal, JUnit all fail); 64 KB holds the
    # JUnit file but not the history and the HTML page.  Both are the lab's problem: exit 11.
    mount = tmp_path / "small"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a {size} tmpfs here to fill: {tried.stderr.strip() or tried.returncode}")
    try:
        proc = pkvmlab("run", "--board", "qemu-virt", "--reports", str(mount), "--run-id", "run",
                       str(ROOT / "suites" / "boot"))
        assert proc.returncode == 11, output(proc)
        out = proc.stdout + proc.stderr
        # Nothing crashed on the way out (each test's own error report carries its traceback, as pytest
        # prints one for every error: Python's own format in board runs, hooks.py).
        crashes = ("INTERNALERROR", "Logging error", "Exception ignored", "Error in atexit", "Fatal Python error")
        assert not [c for c in crashes if c in out], output(proc)
        run_dir = mount / "run"
        assert not list(run_dir.glob(".*partial"))
        if (run_dir / "junit.xml").exists():
            parse_junit(run_dir / "junit.xml")     # whole and schema-valid, or not there at all
            assert "pkvmlab: infrastructure error: the run's record is incomplete: No space left on device" in out
        else:
            assert "pkvmlab: infrastructure error: the report could not be written: No space left on device" in out
        assert ((run_dir / "junit.xml").exists()) == (size == "64k")
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_collect_only_and_help_write_nothing(tmp_path):
    reports = tmp_path / "reports"
    for extra in (["--collect-only", "-q"], ["--help"]):
        proc = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "--board", "qemu-virt", "--reports",
                               str(reports), *extra, str(ROOT / "suites" / "boot")], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, output(proc)
        assert not reports.exists(), f"{extra}: wrote {list(reports.rglob('*'))}"
    assert "test_reached_shell" in proc.stdout or "--board" in proc.stdout


def test_a_pytest_usage_error_after_the_early_power_on_leaves_no_run_behind(tmp_path):
    """`pkvmlab run` sets the run up and powers the board on before pytest parses its own options
    (pkvmlab/earlyboot.py); when pytest then rejects one, the board is powered off and the run
    directory removed again: exactly what an unknown option left before, nothing."""
    reports = tmp_path / "reports"
    proc = subprocess.run([sys.executable, "-m", "pkvmlab.cli", "run", "--board", "qemu-virt", "--reports",
                           str(reports), "--no-such-option", str(ROOT / "suites" / "boot")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, output(proc)          # pytest's usage error
    assert "unrecognized arguments: --no-such-option" in proc.stderr, output(proc)
    assert not reports.exists() or list(reports.iterdir()) == [], list(reports.rglob("*"))


def test_sigterm_while_the_board_powers_on_leaves_no_half_made_run(tmp_path):
    """A run stopped while its QEMU starts and pytest starts (earlyboot.py) ends as interrupted, its board
    off, and leaves either nothing (stopped before pkvmlab's plugin took the run over: no run directory)
    or a whole interrupted run (after: the signal is kept until the session runs, then ends it with its
    JUnit file written).  Which one depends on where the signal lands; never a half-made run."""
    reports = tmp_path / "reports"
    proc = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", "qemu-virt", "--reports",
                             str(reports), str(ROOT / "suites" / "boot")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not qemu_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    qemu = qemu_children(proc.pid)
    assert qemu, "QEMU never started"
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 14, out
    assert "interrupted" in out and "Traceback" not in out, out
    assert not any(Path(f"/proc/{pid}").exists() for pid in qemu), "QEMU outlived the run"
    runs = [p for p in reports.iterdir() if p.is_dir()] if reports.exists() else []
    if runs:
        (run_dir,) = runs
        _, props, cases = parse_junit(run_dir / "junit.xml")
        assert props["pkvmlab.interrupted"] == "SIGTERM"
        assert {c.find("error").get("type") for c in cases.values()} <= {"pkvmlab.interrupted"}, out
    else:
        assert not reports.exists() or list(reports.iterdir()) == [], list(reports.rglob("*"))


def test_plain_pytest_powers_the_board_on_at_session_start(tmp_path):
    """With pytest as the entry point (no `pkvmlab run` before it) the plugin sets the run up in
    pytest's configure and powers the board on at session start, before collection."""
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "pytest"), "--lg-env", str(ROOT / "envs" / "qemu-virt.yaml"),
                           "--reports", str(tmp_path), "--run-id", "run", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "suites" / "boot")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, output(proc)
    marks = [m["name"] for m in json.loads((tmp_path / "run" / "timeline.json").read_text())["marks"]]
    assert marks[:5] == ["process_start", "configure", "run_ready", "boot_start", "collected"], marks


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path):
    from pkvmlab.runstate import make_run_dir
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: make_run_dir(tmp_path, "20261203-120000-qemu-virt", chosen=False),
                             range(8)))
    names = sorted(run_id for _, run_id in made)
    assert len(set(names)) == 8 and names[0] == "20261203-120000-qemu-virt"
    assert all(path.is_dir() and path.name == run_id for path, run_id in made)


def test_two_real_runs_at_once_both_finish(tmp_path):
    suite = write_suite(tmp_path, "def test_shell(booted):\n    assert booted.run('true')[1] == 0\n")
    procs = [subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-m", "pkvmlab.cli", "run", "--board",
                               "qemu-virt", "--reports", str(tmp_path / "reports"), str(suite)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    started = time.monotonic()
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-1500:] for o in outs]
    runs = sorted(d.name for d in (tmp_path / "reports").iterdir() if d.is_dir())
    assert len(runs) == 2 and all((tmp_path / "reports" / r / "junit.xml").exists() for r in runs), runs
    assert time.monotonic() - started < 180


def test_an_error_raised_while_an_interrupt_unwound_is_the_interrupts():
    """labgrid's step stack, cut in half by a SIGTERM, fails its own assertion; never_retry keeps that error
    and wraps it in StrategyError on the next call.  The run's verdict is the interrupt, not the board's."""
    from labgrid.strategy.common import StrategyError

    from pkvmlab.outcome import BOARD, INTERRUPTED, classify

    def broken_step():
        try:
            raise KeyboardInterrupt("interrupted by SIGTERM")
        except KeyboardInterrupt:
            raise AssertionError() from None    # `from None` hides it from tracebacks, not from __context__

    try:
        broken_step()
    except AssertionError as err:
        first = err
    try:
        raise StrategyError("BootShellStrategy is in broken state") from first
    except StrategyError as err:
        wrapped = err
    assert classify(wrapped).kind is INTERRUPTED
    assert classify(wrapped).message == "interrupted by SIGTERM"
    assert classify(AssertionError("EL2 expected")).kind is BOARD      # a plain assertion stays the board's
