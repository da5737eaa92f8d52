"""Atomic writes: an interrupted write leaves the previous report, the new one is whole or absent."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pkvmlab.report.atomic import atomic_write_bytes, atomic_write_text

OLD = "<testsuites name='old run'/>\n"


def test_replaces_the_file(tmp_path):
    target = tmp_path / "reports" / "junit.xml"
    atomic_write_text(target, OLD)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["junit.xml"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_exception_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "junit.xml"
    target.write_text(OLD)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"<testsuites>" + b"x" * 100_000)
    assert target.read_text() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]   # the temporary file is gone too


def test_keyboard_interrupt_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "report.html"
    target.write_text(OLD)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "<html>half")
    assert target.read_text() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


WRITER = """
import os, sys, time
from pkvmlab.report import atomic
real_fsync = os.fsync
def stalled(fd):
    real_fsync(fd)
    open(sys.argv[2], "w").close()          # tell the parent: data is in the temporary file
    time.sleep(60)
os.fsync = stalled
atomic.atomic_write_bytes(sys.argv[1], b"<testsuites name='new run'>" + b" " * 1_000_000)
"""


def test_sigkill_mid_write_leaves_the_old_file_whole(tmp_path):
    """A run killed (SIGKILL, no cleanup possible) while writing: readers still see the old report."""
    target = tmp_path / "junit.xml"
    target.write_text(OLD)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(ready)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline, "writer never reached fsync"
            time.sleep(0.02)
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".junit.xml.")]
        assert leftovers and leftovers[0].stat().st_size > 1_000_000   # the new data was on disk, not in place
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert target.read_text() == OLD
