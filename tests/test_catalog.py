"""The board catalog (issue 9, item 4): real dev boards, each citing public sources, each failing fast
and by name when its lab resources are not there.  Nothing here boots QEMU."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pkvmlab.boards import load_board

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ("rock-5b", "rpi-5", "imx8mp-evk", "am62x-sk", "rb3-gen2", "rb5", "sm8550-hdk", "x1e-devkit")
URL = re.compile(r"https?://\S+")


def header(path):
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("name", CATALOG)
def test_catalog_board_validates(name):
    board = load_board(name)
    assert board.power == "pdu" and board.console == "serial" and board.env.is_file()
    if board.expect.boot_el == "EL1":
        assert (board.expect.kvm_mode, board.expect.pvm) == ("none", False)


@pytest.mark.parametrize("name", CATALOG)
def test_catalog_header_cites_public_sources(name):
    text = header(ROOT / "boards" / f"{name}.yaml")
    assert URL.search(text), f"boards/{name}.yaml: header cites no http(s) URL"
    assert "../shared" not in text
    assert "Uncertain" in text, f"boards/{name}.yaml: header says nothing about what is uncertain"


def _resources(name):
    env = (ROOT / "envs" / f"{name}.yaml").read_text()
    serial = re.search(r"NetworkSerialPort:\s+host: (\S+)\s+port: (\d+)", env)
    power = re.search(r"host: '(http://[^/]+)/", env)
    return f"{serial.group(1)}:{serial.group(2)}", power.group(1)


def _run(name, tmp_path):
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "pkvmlab.cli", "run", "--board", name, "--reports", str(tmp_path / "reports")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        process.stdout_text, process.stderr_text = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.communicate()
    seconds = time.monotonic() - started
    assert not _children_left(process.pid), f"{name}: processes left behind in its session"
    return process, seconds


def _children_left(session_leader_pid):
    left = []
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(child.name)) == session_leader_pid:
                left.append(child.name)
        except (ProcessLookupError, PermissionError):
            pass
    return left


@pytest.fixture(scope="module", params=CATALOG)
def run_without_hardware(request, tmp_path_factory):
    """``pkvmlab run`` of a catalog board with nothing wired: once per board, for the checks below."""
    process, seconds = _run(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, process, seconds


def test_catalog_board_without_hardware_fails_naming_the_resource(run_without_hardware):
    """No board, no serial server, no PDU: the run fails at once and says which resource is missing."""
    name, process, seconds = run_without_hardware
    output = process.stdout_text + process.stderr_text
    serial, power = _resources(name)
    host_port = power.split("//", 1)[1]
    host, port = host_port.split(":")
    assert process.returncode != 0
    assert serial in output or power in output or (f"host='{host}', port={port}" in output), output[-2000:]
    assert seconds < 30, f"{name}: took {seconds:.1f} s"


def test_catalog_board_without_hardware_is_infrastructure(run_without_hardware):
    name, process, seconds = run_without_hardware
    assert process.returncode == 11, f"{name}: exit {process.returncode}"
    assert "power off failed: " in process.stdout_text + process.stderr_text
    assert seconds < 10, f"{name}: took {seconds:.1f} s"
