"""The lab matrix: one column per board/kernel/mode, one row per check, no I/O and no HTML.

Kept apart from the page so what the report claims (which check passed
where, and with what measured values) can be tested without a browser, and
so a run's report and a merged lab report are the same thing with one or many
columns.
"""

import os
from dataclasses import dataclass, field

from .junit import ERROR, FAILED, PASSED, SKIPPED

# What a person looks for first about a boot, as (label, pkvmlab property).
FACTS = (
    ("boot EL", "boot_el"),
    ("KVM mode (measured)", "kvm_mode"),
    ("kvm-arm.mode asked", "kvm_arm_mode"),
    ("boot seconds", "boot_seconds"),
    ("/dev/kvm", "dev_kvm"),
    ("kernel package", "kernel_package"),
    ("SoC", "soc"),
    ("run", "run_id"),
    ("started", "started"),
)


@dataclass
class Column:
    """One testsuite: a board booting one kernel in one KVM mode."""

    title: str           # board/kernel-release/mode (or the suite's own name)
    board: str
    kernel: str
    mode: str
    facts: dict          # label -> value, in FACTS order (missing ones left out)
    log_path: str        # console log, absolute or relative to the JUnit file's directory ("" if none)
    junit_path: str
    counts: dict


@dataclass
class Cell:
    outcome: str                                   # passed/failed/error/skipped, or "missing"
    message: str = ""                              # failure message or skip reason
    measured: dict = field(default_factory=dict)   # key -> value the test recorded
    detail: str = ""
    system_out: str = ""


@dataclass
class Row:
    """One check: a test (classname::name) as it appears in any suite."""

    key: str
    label: str
    group: str
    cells: list      # one Cell per column


@dataclass
class Matrix:
    columns: list
    rows: list

    def totals(self):
        result = {PASSED: 0, FAILED: 0, ERROR: 0, SKIPPED: 0}
        for row in self.rows:
            for cell in row.cells:
                if cell.outcome in result:
                    result[cell.outcome] += 1
        return result


def build_matrix(suites):
    """A Matrix of ``suites`` (from ``junit.load_suites``): rows in the order checks first appear."""
    columns = [_column(suite) for suite in suites]
    index = {}
    rows = []
    for position, suite in enumerate(suites):
        for case in suite.cases:
            classname = case.classname.removeprefix(f"{suite.name}.")
            key = f"{classname}::{case.name}"
            if key not in index:
                index[key] = len(rows)
                group = classname.rsplit(".", 1)[-1].removeprefix("test_") if classname else ""
                rows.append(Row(key=key, label=case.name, group=group,
                                cells=[Cell("missing") for _ in suites]))
            rows[index[key]].cells[position] = Cell(
                outcome=case.outcome, message=case.message, measured=suite.measured(case.name),
                detail=case.detail, system_out=case.system_out)
    return Matrix(columns=columns, rows=rows)


def _column(suite):
    board = suite.prop("board")
    kernel = suite.prop("kernel_release")
    mode = suite.prop("kvm_arm_mode")
    if not (board and kernel and mode):
        parts = (suite.name.split("/") + ["", "", ""])[:3]
        board, kernel, mode = board or parts[0], kernel or parts[1], mode or parts[2]
    log = suite.prop("console_log")
    log_path = log if not log or os.path.isabs(log) else os.path.join(str(suite.source.parent), log)
    return Column(title=suite.name, board=board, kernel=kernel, mode=mode,
                  facts={label: suite.prop(key) for label, key in FACTS if suite.prop(key)},
                  log_path=log_path, junit_path=str(suite.source), counts=suite.counts())
