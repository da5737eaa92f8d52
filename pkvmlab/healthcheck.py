"""Health check: one cheap boot to the shell before a matrix spends its boots on a board.

As LAVA does before a device runs jobs, a board that cannot even reach its
shell (QEMU broken, power switch down, board dead) is found once, at the cost
of one boot, instead of failing every cell with the same error.  The check is
a normal ``pkvmlab run`` of ``suites/boot`` with only ``test_reached_shell``;
its JUnit file is kept (it is merged into the matrix report), and when it
fails every cell is written as skipped with the health check's first cause.
"""

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .boards import project_root
from .report.junit import write_junit

HEALTH_TEST = "test_reached_shell"


def run_health_check(board, reports, matrix_id, preexec_fn=None):
    """Boot ``board`` (a name or board file) to its shell once; returns exit, seconds, message, run_dir."""
    run_id = f"{matrix_id}/health-check"
    root = project_root()
    cmd = [sys.executable, "-m", "pkvmlab.cli", "run", "--board", board, "--reports", str(reports),
           "--run-id", run_id, str(root / "suites" / "boot"), "-k", HEALTH_TEST, "-q", "-p", "no:cacheprovider"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, preexec_fn=preexec_fn)
    run_dir = Path(reports) / run_id
    if run_dir.is_dir():
        (run_dir / "pytest-output.txt").write_text(proc.stdout + proc.stderr)
    message = first_problem(run_dir / "junit.xml") if proc.returncode else ""
    if proc.returncode and not message:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit code {proc.returncode}"
    return {"exit": proc.returncode, "seconds": round(time.monotonic() - started, 1), "message": message,
            "run_dir": run_dir}


def first_problem(junit_path):
    """``<class>: <message>`` of the first failure or error in ``junit_path``, or ''."""
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError):
        return ""
    for element in root.iter():
        if element.tag in ("failure", "error"):
            kind = (element.get("type") or "").removeprefix("pkvmlab.")
            return f"{kind}: {element.get('message') or ''}" if kind else element.get("message") or ""
    return ""


def write_skipped_cell(path, suite_name, board_name, message):
    """A cell the health check kept from running: one skipped testcase saying why (schema-checked)."""
    suites = ET.Element("testsuites", name="pkvmlab", tests="1", failures="0", errors="0")
    suite = ET.SubElement(suites, "testsuite", name=suite_name, tests="1", failures="0", errors="0",
                          skipped="1", time="0")
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="pkvmlab.board", value=board_name)
    ET.SubElement(properties, "property", name="pkvmlab.health_check", value="failed")
    case = ET.SubElement(suite, "testcase", classname="pkvmlab.health_check", name=HEALTH_TEST, time="0")
    reason = f"not run: {board_name} failed its health check ({message})"
    ET.SubElement(case, "skipped", message=reason).text = reason
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_junit(path, b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(suites, encoding="utf-8"))
