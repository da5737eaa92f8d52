"""Run records of boards driven by device tools: the audit log and what was flashed.

On a phone every action is an adb or fastboot command line, so the run keeps
all of them (``<run dir>/audit.log``, :mod:`pkvmlab.lab.audit`) from the
plugin's configure to its unconfigure, whatever suites run, and what the
strategy sent to which partition (``<run dir>/flash.json``), also when the board
never came up (locked bootloader, wrong sha256, device gone).
"""

import json


def start_records(run):
    """Open the audit log for a board driven by adb/fastboot; None for other boards."""
    if not run.board.device_tools:
        return None
    from ..lab.audit import start_audit_log  # imports labgrid: not at plugin load
    return start_audit_log(run.run_dir / "audit.log")


def finish_records(run, audit):
    """Close the audit log and write flash.json from the strategy's record."""
    if audit is None:
        return
    audit.close()
    strategy = run.session.strategy if run.session is not None else None
    if strategy is None or not hasattr(strategy, "flash_record"):
        return
    directory = strategy.images_directory() if hasattr(strategy, "images_directory") else None
    record = {"mode": getattr(strategy, "mode", None), "image_dir": str(directory) if directory else None,
              "steps": strategy.flash_record,
              "error": str(strategy.broken) if getattr(strategy, "broken", None) else None}
    (run.run_dir / "flash.json").write_text(json.dumps(record, indent=2) + "\n")
