"""A small SQLite history of runs: boot time and pass rate per board over time, and flaky tests.

One JUnit file says how one run went; whether a board got slower or a test
started flipping needs the runs before it.  ``record_run`` adds a JUnit file
(one row per testsuite, i.e. per board/kernel/mode, and one per test) inside a
single transaction, so an interrupted record leaves the history as it was;
recording the same run again replaces it.  The queries return plain
dataclasses for the HTML page and the CLI.
"""

import contextlib
import datetime
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .junit import ERROR, FAILED, PASSED, SKIPPED, XFAILED, load_suites
from .table import column_key

SCHEMA_VERSION = 4   # 2: runs.xfailed (known findings counted apart from skips); 3: runs.interrupted, results.class;
# 4: runs.identity (the combination, ``record.IDENTITY``) and results.kind (``record.KINDS``)
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL,
    suite TEXT NOT NULL,              -- board/kernel-release/mode
    board TEXT NOT NULL,
    kernel_release TEXT,
    kvm_arm_mode TEXT,
    kvm_mode TEXT,
    boot_el TEXT,
    boot_seconds REAL,
    started TEXT NOT NULL,            -- ISO 8601, UTC: sorts as text
    source TEXT,
    passed INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    xfailed INTEGER NOT NULL DEFAULT 0,
    interrupted TEXT,                 -- the signal that ended the run (SIGTERM...), NULL if it ran to the end
    identity TEXT,                    -- the combination's identity (report.record.IDENTITY), the page's column
    PRIMARY KEY (run_id, suite)
);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL,
    suite TEXT NOT NULL,
    test TEXT NOT NULL,               -- classname::name as the run wrote it
    outcome TEXT NOT NULL,            -- passed, failed, error, xfailed, skipped
    seconds REAL,
    message TEXT,
    class TEXT,                       -- failure class: board, configuration, infrastructure, harness, interrupted
    kind TEXT,                        -- outcome kind (report.record.KINDS): pass, fail, finding, waived, artifact...
    PRIMARY KEY (run_id, suite, test)
);
CREATE INDEX IF NOT EXISTS results_by_test ON results (suite, test);
"""


VERDICT = {PASSED: "pass", FAILED: "fail", ERROR: "fail", XFAILED: "xfail"}


@dataclass(frozen=True)
class TrendPoint:
    """One board/kernel/mode combination in one run."""

    board: str
    suite: str
    run_id: str
    started: str
    boot_seconds: float | None
    passed: int
    failed: int
    errors: int
    skipped: int
    xfailed: int = 0
    interrupted: str | None = None   # the signal that ended the run early

    @property
    def pass_rate(self):
        """Passed / (passed + failed + errors); skips and known findings (xfail) are left out. None if nothing ran."""
        ran = self.passed + self.failed + self.errors
        return self.passed / ran if ran else None


@dataclass(frozen=True)
class Flaky:
    """A test whose verdict changed between consecutive runs of the same board/kernel/mode."""

    suite: str
    test: str
    flips: int
    history: tuple   # ((run_id, started, outcome), ...) oldest first, skips included


@contextlib.contextmanager
def connect(db_path):
    """An open history database (created on first use), closed afterwards."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db_path, timeout=30)   # matrix cells may record at once
    try:
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        if "xfailed" not in columns:   # a version 1 history
            conn.execute("ALTER TABLE runs ADD COLUMN xfailed INTEGER NOT NULL DEFAULT 0")
        if "interrupted" not in columns:   # a version 1 or 2 history
            conn.execute("ALTER TABLE runs ADD COLUMN interrupted TEXT")
        if "identity" not in columns:   # version 1 to 3
            conn.execute("ALTER TABLE runs ADD COLUMN identity TEXT")
        results = {row[1] for row in conn.execute("PRAGMA table_info(results)")}
        if "class" not in results:
            conn.execute("ALTER TABLE results ADD COLUMN class TEXT")
        if "kind" not in results:
            conn.execute("ALTER TABLE results ADD COLUMN kind TEXT")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        yield conn
    finally:
        conn.close()


def record_run(db_path, junit_path):
    """Add (or replace) the runs in ``junit_path``; returns the TrendPoints recorded."""
    junit_path = Path(junit_path)
    fallback_started = datetime.datetime.fromtimestamp(junit_path.stat().st_mtime, datetime.timezone.utc)
    points = []
    rows = []
    for suite in load_suites(junit_path):
        combination = suite.combination or suite.name.split("@")[0]
        run_id = suite.prop("run_id") or junit_path.parent.name
        started = suite.prop("started") or suite.timestamp or fallback_started.strftime("%Y-%m-%dT%H:%M:%SZ")
        counts = suite.counts()
        point = TrendPoint(board=suite.prop("board") or combination.split("/")[0], suite=combination,
                           run_id=run_id, started=started, boot_seconds=_float(suite.prop("boot_seconds")),
                           passed=counts[PASSED], failed=counts[FAILED], errors=counts[ERROR],
                           skipped=counts[SKIPPED], xfailed=counts[XFAILED],
                           interrupted=suite.prop("interrupted") or None)
        points.append(point)
        results = [(run_id, combination, _plain_test_id(case, suite), case.outcome, case.time,
                    case.message[:500], case.failure_class, case.kind) for case in suite.cases]
        rows.append((point, suite, results))
    with connect(db_path) as conn, conn:
        for point, suite, results in rows:
            conn.execute("DELETE FROM results WHERE run_id = ? AND suite = ?", (point.run_id, point.suite))
            conn.execute("INSERT OR REPLACE INTO runs (run_id, suite, board, kernel_release, kvm_arm_mode,"
                         " kvm_mode, boot_el, boot_seconds, started, source, passed, failed, errors, skipped,"
                         " xfailed, interrupted, identity) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                         (point.run_id, point.suite, point.board, suite.prop("kernel_release"),
                          suite.prop("kvm_arm_mode"), suite.prop("kvm_mode"), suite.prop("boot_el"),
                          point.boot_seconds, point.started, str(junit_path), point.passed, point.failed,
                          point.errors, point.skipped, point.xfailed, point.interrupted, column_key(suite)))
            conn.executemany("INSERT OR REPLACE INTO results (run_id, suite, test, outcome, seconds, message,"
                             " class, kind) VALUES (?,?,?,?,?,?,?,?)", results)
    return points


def board_trend(db_path, board=None, limit=50):
    """The last ``limit`` TrendPoints per board (all boards, or one), oldest first."""
    query = ("SELECT board, suite, run_id, started, boot_seconds, passed, failed, errors, skipped, xfailed,"
             " interrupted FROM ("
             " SELECT *, ROW_NUMBER() OVER (PARTITION BY board ORDER BY started DESC) AS age FROM runs"
             " WHERE (? IS NULL OR board = ?)) WHERE age <= ? ORDER BY board, started, suite")
    with connect(db_path) as conn:
        return [TrendPoint(*row) for row in conn.execute(query, (board, board, limit))]


def flaky_tests(db_path, window=20):
    """Tests whose verdict changed between runs, most flips first.

    Per board/kernel/mode, over its last ``window`` runs.  Skipped runs are left
    out of the comparison (a skip says the check did not apply, not that it
    passed or failed); ``failed`` and ``error`` count as the same verdict; a
    known finding (xfail) is a verdict of its own, so a finding that shows on
    some runs and not on others is listed.
    """
    query = ("SELECT r.suite, r.test, r.run_id, runs.started, r.outcome FROM results r"
             " JOIN runs USING (run_id, suite) ORDER BY r.suite, r.test, runs.started")
    series = {}
    with connect(db_path) as conn:
        recent = {suite: set(ids) for suite, ids in _recent_runs(conn, window).items()}
        for suite, test, run_id, started, outcome in conn.execute(query):
            if run_id in recent.get(suite, ()):
                series.setdefault((suite, test), []).append((run_id, started, outcome))
    found = []
    for (suite, test), history in series.items():
        verdicts = [VERDICT.get(outcome, outcome) for _, _, outcome in history if outcome != SKIPPED]
        flips = sum(1 for a, b in zip(verdicts, verdicts[1:], strict=False) if a != b)
        if flips:
            found.append(Flaky(suite=suite, test=test, flips=flips, history=tuple(history)))
    return sorted(found, key=lambda f: (-f.flips, f.suite, f.test))


def check_history(db_path, column_keys, window=20):
    """{(column key, test): [table.Point]} oldest first: each check's last ``window`` runs per combination.

    The column key is the run's identity (``table.column_key``), so the page shows a check's history
    across kernel upgrades within its combination; rows recorded before schema 4 have none and are
    not found.  Rows without a kind (schema 3) get the one of their status.
    """
    from .table import Point
    wanted = set(column_keys)
    found = {}
    if not wanted:
        return found
    query = ("SELECT runs.identity, r.test, r.run_id, runs.started, runs.kernel_release, r.outcome, r.kind"
             " FROM results r JOIN runs USING (run_id, suite) WHERE runs.identity IS NOT NULL"
             " ORDER BY runs.started")
    with connect(db_path) as conn:
        for identity, test, run_id, started, kernel, outcome, kind in conn.execute(query):
            if identity in wanted:
                found.setdefault((identity, test), []).append(
                    Point(run_id, started, kernel or "", kind or _KIND_OF_STATUS.get(outcome, outcome)))
    return {key: points[-window:] for key, points in found.items()}


_KIND_OF_STATUS = {PASSED: "pass", FAILED: "fail", ERROR: "error", XFAILED: "waived", SKIPPED: "skip"}


def _recent_runs(conn, window):
    recent = {}
    for suite, run_id in conn.execute("SELECT suite, run_id FROM runs ORDER BY suite, started DESC"):
        ids = recent.setdefault(suite, [])
        if len(ids) < window:
            ids.append(run_id)
    return recent


def _plain_test_id(case, suite):
    """classname::name without the suite prefix a merge adds, so merged and plain runs line up."""
    classname = suite.plain_classname(case.classname)
    return f"{classname}::{case.name}" if classname else case.name


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None
