"""The lab matrix: one column per board/kernel/mode, one row per check, no I/O and no HTML.

Kept apart from the page so what the report claims (which check passed
where, and with what measured values) can be tested without a browser, and
so a run's report and a merged lab report are the same thing with one or many
columns.
"""

import os
from dataclasses import dataclass, field

from .junit import OUTCOMES

# What a person looks for first about a board/kernel/mode, as (label, pkvmlab property): the
# headline rows of the matrix.  The pvm ones are the EL probe's summary (suites/pvm).
FACTS = (
    ("boot EL", "boot_el"),
    ("KVM mode", "kvm_mode"),
    ("boot seconds", "boot_seconds"),
    ("/dev/kvm", "dev_kvm"),
    ("pVM create", "pvm.create"),
    ("host read of pVM page", "pvm.host_read"),
    ("host read of normal VM page", "pvm.control_read"),
    ("pVM page after teardown", "pvm.teardown"),
)
# Where a column came from: the runs table under the matrix.
DETAILS = (
    ("kvm-arm.mode asked", "kvm_arm_mode"),
    ("kernel package", "kernel_package"),
    ("SoC", "soc"),
    ("run", "run_id"),
    ("started", "started"),
    ("interrupted by", "interrupted"),
)
LOG_KEY = "console_log"   # pkvmlab.console_log (the run's), <test>.console_log (a failing test's)


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
    details: dict = field(default_factory=dict)   # label -> value, in DETAILS order

    @property
    def bad(self):
        """Failures and errors in this column."""
        return self.counts.get("failed", 0) + self.counts.get("error", 0)


@dataclass
class Cell:
    outcome: str                                   # passed/failed/error/xfailed/skipped, or "missing"
    message: str = ""                              # failure message, skip reason or known finding
    measured: dict = field(default_factory=dict)   # key -> value the test recorded
    detail: str = ""
    system_out: str = ""
    log_path: str = ""                             # this test's console log (failing tests), like Column's
    failure_class: str = ""                        # board, infrastructure, ... (pkvmlab.outcome), failures only


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
        result = dict.fromkeys(OUTCOMES, 0)
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
            classname = suite.plain_classname(case.classname)
            key = f"{classname}::{case.name}"
            if key not in index:
                index[key] = len(rows)
                group = classname.rsplit(".", 1)[-1].removeprefix("test_") if classname else "other"
                rows.append(Row(key=key, label=case.name, group=group,
                                cells=[Cell("missing") for _ in suites]))
            measured = suite.measured(case.name)
            log = measured.pop(LOG_KEY, "")
            rows[index[key]].cells[position] = Cell(
                outcome=case.outcome, message=case.message, measured=measured,
                detail=case.detail, system_out=case.system_out, log_path=_resolve(log, suite),
                failure_class=case.failure_class or "")
    return Matrix(columns=columns, rows=rows)


def _column(suite):
    board = suite.prop("board")
    kernel = suite.prop("kernel_release")
    mode = suite.prop("kvm_arm_mode")
    if not (board and kernel and mode):
        parts = (suite.name.split("/") + ["", "", ""])[:3]
        board, kernel, mode = board or parts[0], kernel or parts[1], mode or parts[2]
    return Column(title=suite.name, board=board, kernel=kernel, mode=mode,
                  facts={label: suite.prop(key) for label, key in FACTS if suite.prop(key)},
                  details={label: suite.prop(key) for label, key in DETAILS if suite.prop(key)},
                  log_path=_resolve(suite.prop(LOG_KEY), suite), junit_path=str(suite.source),
                  counts=suite.counts())


def _resolve(log, suite):
    """A log path from a property: relative ones are relative to the JUnit file's directory."""
    return log if not log or os.path.isabs(log) else os.path.join(str(suite.source.parent), log)
