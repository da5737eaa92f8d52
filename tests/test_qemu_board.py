"""End to end on the real QEMU board: `pkvmlab run` boots a real arm64 kernel under labgrid.

Each test is one real boot (about 3-5 s under TCG).  JUnit files are parsed
back and validated against Jenkins' junit-10.xsd.
"""

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))
pytestmark = pytest.mark.qemu


def pkvmlab(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_board(tmp_path, board, *extra, run_id="run"):
    proc = pkvmlab("run", "--board", str(board), "--reports", str(tmp_path), "--run-id", run_id, *extra)
    return proc, tmp_path / run_id


def parse_junit(path):
    SCHEMA.validate(str(path))
    suite = ET.parse(path).getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    return suite, props, cases


def board_variant(tmp_path, base, replace, env_replace=None):
    """A copy of boards/<base>.yaml (same name) with text replaced; optionally its own env file."""
    text = (ROOT / "boards" / f"{base}.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    directory = tmp_path / "boards"
    directory.mkdir(exist_ok=True)
    if env_replace:
        env = (ROOT / "envs" / f"{base}.yaml").read_text()
        for old, new in env_replace.items():
            env = env.replace(old, new)
        (directory / "env.yaml").write_text(env)
        text = text.replace(f"env: envs/{base}.yaml", f"env: {directory / 'env.yaml'}")
    path = directory / f"{base}.yaml"
    path.write_text(text)
    return path


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


def test_qemu_virt_el1_passes_with_el1_expectations(tmp_path):
    proc, run_dir = run_board(tmp_path, "qemu-virt-el1", str(ROOT / "suites" / "boot"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0") and len(cases) >= 6
    assert (props["pkvmlab.boot_el"], props["pkvmlab.kvm_mode"], props["pkvmlab.dev_kvm"]) == ("EL1", "none", "no")


def test_wrong_expectation_fails_saying_expected_vs_measured(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {"boot_el: EL2": "boot_el: EL1"})
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert proc.returncode == 1
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    failure = cases["test_boot_el"].find("failure")
    assert failure is not None
    assert "expected every CPU to start at EL1, the kernel says EL2" in failure.get("message")
    out = cases["test_boot_el"].find("system-out").text
    assert "(where the boot facts were read)" in out and "CPU: All CPU(s) started at EL2" in out
    assert cases["test_dev_kvm_matches_el2"].find("failure") is None   # the other checks still judge


def test_board_that_never_boots_fails_in_time_with_console_tail(tmp_path):
    # The kernel boots all the way, but into busybox's own shell (a later rdinit= wins), whose
    # prompt is not the harness's: a board that never reaches its shell, whatever the machine's speed.
    board = board_variant(tmp_path, "qemu-virt", {"boot_timeout: 60": "boot_timeout: 12",
                                                  "kernel_args: kvm-arm.mode=protected":
                                                  "kernel_args: kvm-arm.mode=protected rdinit=/bin/sh"})
    started = time.monotonic()
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    assert int(suite.get("errors")) == len(cases) >= 6
    error = cases["test_reached_shell"].find("error").text
    assert "no shell prompt ('pkvmlab# ') within the boot timeout of 12 s" in error
    assert "--- last console lines ---" in error and "Run /bin/sh as init process" in error
    assert "Booting Linux" in (run_dir / "console.log").read_text()


def test_qemu_that_cannot_start_is_an_error_not_a_hang(tmp_path):
    board = board_variant(tmp_path, "qemu-virt", {}, env_replace={"-no-reboot": "-no-reboot -bogus"})
    started = time.monotonic()
    proc, run_dir = run_board(tmp_path, board, str(ROOT / "suites" / "boot"))
    assert time.monotonic() - started < 60
    suite, props, cases = parse_junit(run_dir / "junit.xml")
    error = cases["test_reached_shell"].find("error").text
    assert "QEMU exited at start" in error and "-bogus" in error


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
    assert proc.returncode == 1, out[-2000:]
    suite, props, cases = parse_junit(tmp_path / "run" / "junit.xml")
    assert "QEMU closed its console" in cases["test_sleeps"].find("failure").get("message") + \
        (cases["test_sleeps"].find("failure").text or "")
    assert log.read_text().count("sleep 60") >= 1


def kill_qemu_children(pid):
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            cmdline = (child / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.split(")")[1].split()[1]) == pid and b"qemu-system-aarch64" in cmdline:
            os.kill(int(child.name), signal.SIGKILL)


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
    assert proc.returncode != 0
    suite, props, cases = parse_junit(tmp_path / "run" / "junit.xml")
    interrupted = cases["test_sleeps"].find("error")
    assert interrupted is not None and "interrupted while running" in interrupted.get("message")
    assert props["pkvmlab.boot_el"] == "EL2"
    assert "sleep 60" in log.read_text()


def test_unknown_board_lists_boards_and_writes_nothing(tmp_path):
    proc = pkvmlab("run", "--board", "qemu-virtt", "--reports", str(tmp_path))
    assert proc.returncode == 2
    assert "unknown board 'qemu-virtt'. Available:" in proc.stderr and "qemu-virt-el1" in proc.stderr
    assert list(tmp_path.iterdir()) == []
