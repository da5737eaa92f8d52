"""Health check: a board that cannot reach its shell fails once, not in every cell of a matrix.

As LAVA does before a device runs jobs, a board that cannot even boot (QEMU
broken, power switch down, board dead) is found at the cost of one boot instead
of failing every cell with the same error.  The matrix (``pkvmlab.matrix``)
spends no boot of its own on it: the first cell whose board fails to boot for
the lab's reasons is the failed check, its JUnit file the first cause, and every
cell that had not finished is written skipped with that cause (this module).
"""

import xml.etree.ElementTree as ET
from pathlib import Path

from .report.junit import write_junit

HEALTH_TEST = "test_reached_shell"


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
