"""Helpers of the tests that run the real board: `pkvmlab run` as a user types it, JUnit parsed back.

Every JUnit file is validated against Jenkins' junit-10.xsd as it is read.
"""

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))


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


def kill_qemu_children(pid):
    for child in qemu_children(pid):
        os.kill(child, signal.SIGKILL)


def children(pid):
    """{pid: cmdline} of the live (not zombie) children of ``pid``, read from /proc."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def qemu_children(pid):
    """PIDs of the qemu-system-aarch64 processes whose parent is ``pid``."""
    return [child for child, cmdline in children(pid).items() if "qemu-system-aarch64" in cmdline]


def start_run(tmp_path, suite, *extra, board="qemu-virt", run_id="run"):
    """`pkvmlab run` in the background (stdout and stderr together), for tests that interrupt it."""
    return subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", str(board), "--reports",
                             str(tmp_path), "--run-id", run_id, *extra, str(suite)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_console(path, text, timeout=90):
    """Wait until the console log has ``text``; False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False
