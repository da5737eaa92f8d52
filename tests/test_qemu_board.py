"""End to end on the real QEMU board: `pkvmlab run` boots a real arm64 kernel under labgrid.

Each test is one real boot (about 3-5 s under TCG).  JUnit files are parsed
back and validated against Jenkins' junit-10.xsd.
"""

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from boardrun import ROOT, board_variant, kill_qemu_children, parse_junit, pkvmlab, run_board

pytestmark = pytest.mark.qemu


def test_qemu_virt_boots_pkvm_and_passes(tmp_path):
    proc, run_dir = run_board(tmp_path, "qemu-virt", str(ROOT / "suites" / "boot"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    assert len(cases) >= 6
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")
    assert props["pkvmlab.boot_el"] == "EL2"
    assert "protected" in props["pkvmlab.kvm_mode"]
    assert props["pkvmlab.kernel_release"] and props["pkvmlab.kernel_package"]
    assert float(props["pkvmlab.boot_seconds"]) > 0
    assert suite.get("name") == (f"qemu-virt/{props['pkvmlab.kernel_release']}/protected/"
                                 f"{props['pkvmlab.emulator']}/max")
    # The emulator is a recorded fact: the board's minimum (QEMU 10.0) is what ran.
    assert props["pkvmlab.emulator_version"].startswith("QEMU emulator version 1")
    assert int(props["pkvmlab.emulator"].split("-")[1].split(".")[0]) >= 10, props["pkvmlab.emulator"]
    assert props["pkvmlab.cpu"] == "max,pauth-impdef=on"
    log = run_dir / props["pkvmlab.console_log"]
    assert "Protected" in log.read_text() and "pkvmlab# " in log.read_text()
    assert (run_dir / "images.json").is_file()
    assert not list(run_dir.glob(".*partial"))
    # The terminal says the board is booting, then how it came up (the same facts as the JUnit).
    assert f"pkvmlab: booting qemu-virt to 'shell' (boot timeout 60 s; console log {log})" in proc.stdout
    assert (f"pkvmlab: qemu-virt ready in {float(props['pkvmlab.boot_seconds']):.1f} s: kernel "
            f"{props['pkvmlab.kernel_release']}, boot EL2, KVM {props['pkvmlab.kvm_mode']}") in proc.stdout
    # Where the run's time went, from its own clock (bench/ratios.py reads this), in the order it happened:
    # `pkvmlab run` powers the board on before pytest starts (earlyboot.py), and it boots meanwhile.
    timeline = json.loads((run_dir / "timeline.json").read_text())
    names = [m["name"] for m in timeline["marks"]]
    if "qemu_prestart" in names:      # QEMU started early from an earlier run's command line (qemuprestart.py)
        assert names.index("qemu_prestart") == names.index("cli") + 1, names
        names.remove("qemu_prestart")
    assert names == ["process_start", "cli", "run_ready", "boot_start", "configure", "collected", "boot_wait",
                     "shell", "facts", "sessionfinish", "report_written", "end"], names
    times = [m["time"] for m in timeline["marks"]]
    assert times == sorted(times)
    assert set(timeline["suites"]) == {"suites/boot/test_boot.py"}
    # The boot is the run's, not the first test's: that case's time excludes it and says so; the root is
    # named as the matrix's merged file is.
    first = next(iter(cases.values()))
    boot = float(props["pkvmlab.boot_seconds"])
    assert float(first.get("time")) < boot, (first.get("name"), first.get("time"), boot)
    assert "session_boot = " in first.find("system-out").text
    assert ET.parse(run_dir / "junit.xml").getroot().get("name") == "pkvmlab"


def test_qemu_virt_el1_passes_with_el1_expectations(tmp_path):
    proc, run_dir = run_board(tmp_path, "qemu-virt-el1", str(ROOT / "suites" / "boot"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0") and len(cases) >= 6
    assert (props["pkvmlab.boot_el"], props["pkvmlab.kvm_mode"], props["pkvmlab.dev_kvm"]) == ("EL1", "none", "no")


def test_wrong_expectation_fails_saying_expected_vs_measured(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {"boot_el: EL2": "boot_el: EL1"})
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert proc.returncode == 1     # a board finding: pytest's "tests failed"
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    failure = cases["test_boot_el"].find("failure")
    assert failure is not None and failure.get("type") == "pkvmlab.board"
    assert "expected every CPU to start at EL1, the kernel says EL2" in failure.get("message")
    out = cases["test_boot_el"].find("system-out").text
    assert "(where the boot facts were read)" in out and "CPU: All CPU(s) started at EL2" in out
    assert cases["test_dev_kvm_matches_el2"].find("failure") is None   # the other checks still judge


def test_board_that_never_boots_fails_in_time_with_console_tail(tmp_path):
    # The kernel boots all the way, but into busybox's own shell (a later rdinit= wins), whose
    # prompt is not the harness's: a board that never reaches its shell, whatever the machine's speed.
    board = board_variant(tmp_path, "qemu-virt", {"boot_timeout: 60": "boot_timeout: 12\nboot_retries: 2",
                                                  "kernel_args: kvm-arm.mode=protected":
                                                  "kernel_args: kvm-arm.mode=protected rdinit=/bin/sh"})
    started = time.monotonic()
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert time.monotonic() - started < 60
    assert proc.returncode == 1     # the board's: it never reached its shell
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    assert int(suite.get("errors")) == len(cases) >= 6
    element = cases["test_reached_shell"].find("error")
    assert element.get("type") == "pkvmlab.board"
    assert element.get("message") == "no shell prompt within 12 s ('pkvmlab# ' never seen) [main]"
    # Every later test names the same first cause, not "BootShellStrategy is in broken state".
    assert {c.find("error").get("message") for c in cases.values()} == {element.get("message")}
    error = element.text
    assert "--- last console lines ---" in error and "Run /bin/sh as init process" in error
    assert "Booting Linux" in (run_dir / "console.log").read_text()
    # A board's failure is never retried, whatever boot_retries allows: one attempt, recorded.
    assert props["pkvmlab.boot_attempts"] == "1"
    assert [a["class"] for a in json.loads((run_dir / "boot_attempts.json").read_text())] == ["board"]


def test_qemu_that_cannot_start_is_an_error_not_a_hang(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {}, env_replace={"-no-reboot": "-no-reboot -bogus"})
    started = time.monotonic()
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert time.monotonic() - started < 60
    assert proc.returncode == 11    # infrastructure: the lab's QEMU, not the board
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    element = cases["test_reached_shell"].find("error")
    assert element.get("type") == "pkvmlab.infrastructure"
    assert element.get("message") == "QEMU exited at start (code 1): qemu-system-aarch64: -bogus: invalid option"
    assert "-bogus" in element.text


def test_qemu_killed_mid_run_leaves_valid_junit_and_log(tmp_path):
    slow = tmp_path / "test_slow.py"
    slow.write_text("def test_sleeps(booted):\n    booted.run('sleep 60', timeout=90)\n\n"
                    "def test_after(booted):\n    booted.run('true')\n")
    proc = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", "qemu-virt", "--reports",
                             str(tmp_path), "--run-id", "run", str(slow)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "console.log"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "sleep 60" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    kill_qemu_children(proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 11, out[-2000:]
    suite, props, cases = parse_junit(tmp_path / "run" / "junit.xml")
    failure = cases["test_sleeps"].find("failure")
    assert failure.get("type") == "pkvmlab.infrastructure"
    assert failure.get("message").startswith("the board's console closed mid-test (exit code -9)")
    assert log.read_text().count("sleep 60") >= 1


def test_sigterm_mid_run_keeps_junit_and_log(tmp_path):
    slow = tmp_path / "test_slow.py"
    slow.write_text("def test_sleeps(booted):\n    booted.run('sleep 60', timeout=90)\n")
    proc = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", "qemu-virt", "--reports",
                             str(tmp_path), "--run-id", "run", str(slow)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "console.log"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "sleep 60" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 14, out[-2000:]
    suite, props, cases = parse_junit(tmp_path / "run" / "junit.xml")
    interrupted = cases["test_sleeps"].find("error")
    assert interrupted.get("type") == "pkvmlab.interrupted"
    assert interrupted.get("message") == f"interrupted by SIGTERM while running {slow}::test_sleeps"
    assert props["pkvmlab.interrupted"] == "SIGTERM"
    assert props["pkvmlab.boot_el"] == "EL2"
    assert "sleep 60" in log.read_text()


def test_unknown_board_lists_boards_and_writes_nothing(tmp_path):
    proc = pkvmlab("run", "--board", "qemu-virtt", "--reports", str(tmp_path))
    assert proc.returncode == 10
    assert "unknown board 'qemu-virtt'. Available:" in proc.stderr and "qemu-virt-el1" in proc.stderr
    assert list(tmp_path.iterdir()) == []
