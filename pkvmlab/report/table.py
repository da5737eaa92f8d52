"""The lab matrix: one column per board × kernel × mode, one row per check, no I/O and no HTML.

A column is a *combination*, keyed by the run's identity (``record.IDENTITY``: board, mode, CPU model
and any kernel-suite or emulator override), not by run: every run of that combination is one more
point in its history, so 17 JUnit files of one lab are a handful of columns, each showing the latest
outcome per check with the runs before it (trend, flips, and where the kernel release changed).
Files written before the identity property are grouped by ``board/kernel/mode[/qemu/cpu]``.

Kept apart from the templates so what the report claims can be tested without a browser, and so a
run's page, a merged lab page and the matrix's Markdown table are the same model rendered three ways.
"""

import os
from dataclasses import dataclass, field

from . import record

# What a person looks for first about a combination, as (label, pkvmlab property): the headline rows.
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
# Where a run came from: the runs table.
DETAILS = (
    ("kvm-arm.mode asked", "kvm_arm_mode"),
    ("kernel package", "kernel_package"),
    ("SoC", "soc"),
    ("run", "run_id"),
    ("started", "started"),
    ("interrupted by", "interrupted"),
)
LOG_KEY = "console_log"   # pkvmlab.console_log (the run's), <test>.console_log (a failing test's)
KIND_ORDER = tuple(record.KINDS)


@dataclass
class Run:
    """One testsuite: one run of one combination."""

    title: str          # board/kernel-release/mode[/qemu/cpu] (or the suite's own name)
    run_id: str
    started: str
    kernel: str         # kernel release
    emulator: str       # qemu-<version>, or ""
    facts: dict         # label -> value, in FACTS order (missing ones left out)
    details: dict       # label -> value, in DETAILS order
    log_path: str       # console log, absolute or relative to the page's JUnit file's directory ("" if none)
    junit_path: str
    counts: dict        # kind -> number
    kvm_line: str = ""

    @property
    def bad(self):
        return sum(n for kind, n in self.counts.items() if record.status_of(kind) in (record.FAILED, record.ERROR))


@dataclass
class Column:
    """One combination: a board booting one kernel (series) in one KVM mode, and every run of it."""

    key: str             # the identity (or the fallback combination)
    board: str
    kernel_suite: str    # the Debian suite the kernel came from ("" when not recorded)
    mode: str
    cpu: str             # QEMU -cpu model ("" off QEMU)
    runs: list           # [Run], oldest first

    @property
    def latest(self):
        return self.runs[-1]

    @property
    def title(self):
        return self.latest.title

    @property
    def kernel(self):
        return self.latest.kernel

    @property
    def kernels(self):
        """The kernel releases this combination ran, in order of first appearance."""
        return list(dict.fromkeys(run.kernel for run in self.runs if run.kernel))

    @property
    def emulator(self):
        return self.latest.emulator

    @property
    def facts(self):
        return self.latest.facts

    @property
    def details(self):
        return self.latest.details

    @property
    def log_path(self):
        return self.latest.log_path

    @property
    def junit_path(self):
        return self.latest.junit_path

    @property
    def counts(self):
        return self.latest.counts

    @property
    def bad(self):
        return self.latest.bad


@dataclass(frozen=True)
class Point:
    """A check's outcome in one run of its combination."""

    run_id: str
    started: str
    kernel: str
    kind: str


@dataclass
class Cell:
    """A check in a combination: its latest outcome, what it measured, and its history."""

    kind: str = record.MISSING                     # record kind, or MISSING
    message: str = ""                              # failure message, skip reason or finding
    measured: dict = field(default_factory=dict)   # key -> value the test recorded
    detail: str = ""
    system_out: str = ""
    log_path: str = ""                             # this test's console log (failing tests), like Run's
    failure_class: str = ""                        # board, infrastructure, ... (pkvmlab.outcome), failures only
    history: list = field(default_factory=list)    # [Point] oldest first, the latest included
    notes: list = field(default_factory=list)      # emulator comparisons (see emulator_artifacts)

    @property
    def outcome(self):
        """The status (passed, failed, error, xfailed, skipped) or MISSING."""
        return record.MISSING if self.kind == record.MISSING else record.status_of(self.kind)

    @property
    def finding(self):
        return self.kind != record.MISSING and record.KINDS[self.kind].finding

    @property
    def flips(self):
        """How often the verdict changed between runs (skips left out; fail and error are one verdict)."""
        verdicts = [_verdict(p.kind) for p in self.history if record.status_of(p.kind) != record.SKIPPED]
        return sum(1 for a, b in zip(verdicts, verdicts[1:], strict=False) if a != b)

    @property
    def kernel_changes(self):
        """Positions in ``history`` where the kernel release differs from the run before."""
        return [i for i in range(1, len(self.history))
                if self.history[i].kernel and self.history[i - 1].kernel
                and self.history[i].kernel != self.history[i - 1].kernel]


def _verdict(kind):
    status = record.status_of(kind)
    return record.FAILED if status == record.ERROR else kind if status == record.XFAILED else status


@dataclass
class Row:
    """One check: a test (module classname::name) as it appears in any combination."""

    key: str
    label: str
    group: str
    cells: list      # one Cell per column


@dataclass
class Matrix:
    columns: list
    rows: list

    def totals(self):
        """Latest outcome per check and combination, counted by kind."""
        result = dict.fromkeys(KIND_ORDER, 0)
        for row in self.rows:
            for cell in row.cells:
                if cell.kind in result:
                    result[cell.kind] += 1
        return result

    def findings(self):
        """(column, row, cell) of every latest outcome that is a finding (waived or not) or has notes."""
        return [(column, row, cell) for row in self.rows
                for column, cell in zip(self.columns, row.cells, strict=True) if cell.finding or cell.notes]

    def runs(self):
        """(column, run) of every run, column by column."""
        return [(column, run) for column in self.columns for run in column.runs]


def column_key(suite):
    """The combination a suite belongs to: its identity, else board/kernel/mode[/qemu/cpu], else its name."""
    return suite.identity or suite.combination or suite.name.split("@")[0]


def build_matrix(suites, past=None):
    """A Matrix of ``suites`` (from ``junit.load_suites``), one column per combination.

    ``past`` maps (column key, row key) to earlier ``Point``s (from ``history.check_history``); runs
    already among ``suites`` are not counted twice.  Rows are in the order checks first appear.
    """
    groups = {}
    for suite in suites:
        groups.setdefault(column_key(suite), []).append(suite)
    columns, per_column = [], []
    for key, members in groups.items():
        members = sorted(members, key=lambda s: s.prop("started") or s.timestamp or "")
        latest = members[-1]
        columns.append(Column(key=key, board=_board(latest), kernel_suite=latest.prop("kernel_suite"),
                              mode=_part(latest, "kvm_arm_mode", 2), cpu=latest.prop("cpu").split(",", 1)[0],
                              runs=[_run(s) for s in members]))
        per_column.append(members)
    index, rows = {}, []
    for position, (column, members) in enumerate(zip(columns, per_column, strict=True)):
        for suite, run in zip(members, column.runs, strict=True):
            for case in suite.cases:
                classname = suite.plain_classname(case.classname)
                key = f"{classname}::{case.name}" if classname else case.name   # as history keeps it
                if key not in index:
                    index[key] = len(rows)
                    group = classname.rsplit(".", 1)[-1].removeprefix("test_") if classname else "other"
                    rows.append(Row(key=key, label=case.name, group=group, cells=[Cell() for _ in columns]))
                measured = suite.measured(case.name)
                log = measured.pop(LOG_KEY, "")
                history = rows[index[key]].cells[position].history
                rows[index[key]].cells[position] = Cell(
                    kind=case.kind, message=case.message, measured=measured, detail=case.detail,
                    system_out=case.system_out, log_path=_resolve(log, suite),
                    failure_class=case.failure_class or "",
                    history=[*history, Point(run.run_id, run.started, run.kernel, case.kind)])
    for row in rows:
        for column, cell in zip(columns, row.cells, strict=True):
            earlier = [p for p in (past or {}).get((column.key, row.key), ())
                       if p.run_id not in {q.run_id for q in cell.history}]
            if earlier:
                cell.history = sorted([*earlier, *cell.history], key=lambda p: p.started)
    matrix = Matrix(columns=columns, rows=rows)
    for (row_key, position), notes in emulator_artifacts(matrix).items():
        matrix.rows[[r.key for r in matrix.rows].index(row_key)].cells[position].notes = notes
    return matrix


def emulator_artifacts(matrix):
    """{(row key, column position): [note]} for checks whose latest outcome differs with the emulator alone.

    Columns of the same board, kernel release, mode and CPU model that ran on different emulators are
    compared: a check that fails, errs or is waived under one and passes under another is the
    emulator's doing, and the failing cell gets "emulator artifact: <check>: pass on qemu-10.0.2,
    artifact on qemu-7.2.22" (each emulator's outcome kind).
    """
    groups = {}
    for position, column in enumerate(matrix.columns):
        if column.emulator:
            groups.setdefault((column.board, column.kernel, column.mode, column.cpu), []).append(position)
    notes = {}
    for members in groups.values():
        if len({matrix.columns[p].emulator for p in members}) < 2:
            continue
        for row in matrix.rows:
            seen = {matrix.columns[p].emulator: row.cells[p].kind for p in members
                    if row.cells[p].kind != record.MISSING}
            bad = {e for e, kind in seen.items() if record.status_of(kind) in (record.FAILED, record.ERROR,
                                                                                 record.XFAILED)}
            good = {e for e, kind in seen.items() if kind == record.PASS}
            if bad and good:
                text = f"emulator artifact: {row.label}: " + ", ".join(f"{seen[e]} on {e}" for e in sorted(seen))
                for p in members:
                    if matrix.columns[p].emulator in bad:
                        notes.setdefault((row.key, p), []).append(text)
    return notes


def pivot(matrix):
    """The matrix's combinations as rows (kernel suite, kernel, emulator, CPU) × columns (KVM modes).

    Returns (modes, [(row labels dict, [Column or None per mode])]): the matrix command's table.
    """
    modes = list(dict.fromkeys(c.mode for c in matrix.columns))
    rows = {}
    for column in matrix.columns:
        key = (column.board, column.kernel_suite, column.kernel, column.emulator, column.cpu)
        rows.setdefault(key, dict.fromkeys(modes))[column.mode] = column
    return modes, [({"board": k[0], "kernel_suite": k[1], "kernel": k[2], "emulator": k[3], "cpu": k[4]},
                    [by_mode[m] for m in modes]) for k, by_mode in rows.items()]


def _board(suite):
    return suite.prop("board") or _part(suite, "board", 0)


def _part(suite, prop, position):
    value = suite.prop(prop)
    return value or (suite.name.split("/") + ["", "", ""])[position]


def _run(suite):
    counts = dict.fromkeys(KIND_ORDER, 0)
    for case in suite.cases:
        counts[case.kind] += 1
    return Run(title=suite.combination or suite.name.split("@")[0], run_id=suite.prop("run_id") or suite.name,
               started=suite.prop("started") or suite.timestamp or "",
               kernel=suite.prop("kernel_release") or _part(suite, "kernel_release", 1),
               emulator=suite.prop("emulator"),
               facts={label: suite.prop(key) for label, key in FACTS if suite.prop(key)},
               details={label: suite.prop(key) for label, key in DETAILS if suite.prop(key)},
               log_path=_resolve(suite.prop(LOG_KEY), suite), junit_path=str(suite.source),
               counts=counts, kvm_line=suite.prop("kvm_line"))


def _resolve(log, suite):
    """A log path from a property: relative ones are relative to the JUnit file's directory."""
    return log if not log or os.path.isabs(log) else os.path.join(str(suite.source.parent), log)
