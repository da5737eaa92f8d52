"""The `pkvmlab` command as a process: exit codes and output survive its fast exit."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_output_and_exit_code_arrive_whole():
    proc = cli("boards")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.stem for p in (ROOT / "boards").glob("*.yaml"))


def test_usage_error_is_exit_2_with_the_message():
    proc = cli("bogus")
    assert proc.returncode == 2 and "invalid choice: 'bogus'" in proc.stderr


def test_reader_that_left_gets_no_traceback():
    """`pkvmlab boards | head -0`: the pipe's reader is gone before the first line is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "pkvmlab.cli", "boards"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=60)
    os.close(write_end)
    assert proc.returncode == 128 + signal.SIGPIPE
    assert proc.stderr == ""
