"""Run records of an Android board: the audit log of device commands, and what was flashed.

On a phone every action is an adb or fastboot command line, so the run's
report keeps all of them (``<run dir>/audit.log``, :mod:`pkvmlab.lab.audit`),
from the first ``fastboot devices`` to the last ``adb shell``, and what the
strategy sent to which partition (``<run dir>/flash.json``), also when the
board never came up (locked bootloader, wrong sha256, device gone).  The log is
opened before the first test sets up the board and closed after the last one
lets it go, so it covers the session fixture's whole life.  The phone's kernel
log, where the boot facts (EL, KVM mode) come from, is kept as ``dmesg.txt``:
a phone has no console the harness can read.
"""

import json

import pytest

from pkvmlab.lab.audit import start_audit_log
from pkvmlab.plugin.hooks import RUN_KEY

AUDIT_KEY = pytest.StashKey[object]()


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    run = session.config.stash.get(RUN_KEY, None)
    if run is None or run.board.kind != "android" or AUDIT_KEY in session.config.stash:
        return (yield)
    audit = start_audit_log(run.run_dir / "audit.log")
    session.config.stash[AUDIT_KEY] = audit
    try:
        return (yield)
    finally:
        audit.close()
        _write_flash_record(run)


def _write_flash_record(run):
    strategy = run.session.strategy if run.session is not None else None
    if strategy is None or not hasattr(strategy, "flash_record"):
        return
    directory = strategy.images_directory() if hasattr(strategy, "images_directory") else None
    record = {"mode": getattr(strategy, "mode", None), "image_dir": str(directory) if directory else None,
              "steps": strategy.flash_record,
              "error": str(strategy.broken) if getattr(strategy, "broken", None) else None}
    (run.run_dir / "flash.json").write_text(json.dumps(record, indent=2) + "\n")


@pytest.fixture(scope="session", autouse=True)
def kernel_log_kept(booted):
    """``<run dir>/dmesg.txt``: the kernel log the boot facts were read from (needs root on Android)."""
    lines, code = booted.run("dmesg", timeout=60)
    (booted.run_dir / "dmesg.txt").write_text("\n".join(lines) + "\n" + ("" if code == 0 else f"(dmesg exit {code})\n"))
