"""One self-contained HTML page per run or per merged lab report, from ``templates/report.html.j2``.

Everything is inline (CSS, SVG charts; no script, no fonts, no images) so the page opens from a CI
artefact, a mail or an archive offline and looks the same in ten years.  Read top-down: the latest
outcome counts by kind; the findings and waivers, called out; the matrix from ``table`` (checks ×
board/kernel/mode combinations, one column per combination however many runs it had), each cell
with its latest outcome, what it measured, its history strip (one mark per run, oldest first, a bar
where the kernel release changed) and a flaky mark; the reasons of skips and findings as numbered
notes; each failure with its message and console excerpt; every run; and, given the history
database, boot time and pass rate per board over time and the tests that flip.

This module only gathers what the template shows (no markup is built here); Jinja2 escapes every
value of the HTML and SVG templates (``autoescape``; the Markdown one is not HTML).
"""

import datetime
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from . import history as history_db
from . import record
from .atomic import atomic_write_text
from .charts import line_chart
from .junit import load_suites
from .table import build_matrix

CONSOLE_LINES = 40   # failing cases carry a trimmed console already; show its tail
MEASURED_CHARS = 60  # one measured value per cell, cut to this; the cell's tooltip has them all
LABELS = {**{name: info.label for name, info in record.KINDS.items()}, record.MISSING: "—"}
NAMES = {record.PASS: "passed", record.FAIL: "failed", record.FINDING: "findings (strict)",
         record.ERROR_KIND: "errors", record.INTERRUPTED: "interrupted", record.WAIVED: "waived findings",
         record.ARTIFACT: "emulator artifacts", record.SKIP: "skipped"}


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report templates (package data: ``pkvmlab/report/templates``).

    One per process: Jinja2 compiles each template once per environment and keeps it.
    """
    env = Environment(loader=PackageLoader("pkvmlab.report", "templates"),
                      autoescape=select_autoescape(("html.j2", "svg.j2"), default_for_string=True, default=False),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["cut"] = _cut
    env.filters["first_line"] = _first_line
    env.globals.update(LABELS=LABELS, NAMES=NAMES, KINDS=record.KINDS, headline=headline, tooltip=tooltip)
    return env


def render_html(junit_path, output=None, history=None, title=None):
    """Write the report page for ``junit_path`` (default ``<dir>/report.html``); returns its path.

    ``history`` is a history database path: it adds each check's earlier runs and the trend view.
    """
    junit_path = Path(junit_path)
    output = Path(output) if output else junit_path.parent / "report.html"
    atomic_write_text(output, build_page(junit_path, output, history, title))
    return output


def build_page(junit_path, output, history=None, title=None):
    """The page as text (no I/O besides reading the inputs)."""
    return environment().get_template("report.html.j2").render(
        page=page_model(junit_path, output, history, title))


@dataclass
class Page:
    """What the template shows."""

    title: str
    junit_href: str
    junit_name: str
    boards: list
    generated: str
    matrix: object
    totals: dict
    notes: list          # [Note]
    note_of: dict        # (row key, column position) -> note number
    failures: list       # [Failure]
    failure_of: dict     # (row key, column position) -> anchor
    href: object         # path -> link relative to the page
    trends: object = None
    history_path: str = ""
    findings: list = field(default_factory=list)
    fact_labels: list = field(default_factory=list)     # the fact rows, in order of first appearance
    detail_labels: list = field(default_factory=list)   # the runs table's columns


@dataclass
class Note:
    number: int
    kind: str
    message: str
    where: list          # [(column title, [check labels])]


@dataclass
class Failure:
    anchor: str
    column: object
    row: object
    cell: object
    console: str
    log: str


@dataclass
class Trends:
    points: int
    boards: list         # [(board, runs, [Chart, Chart])]
    flaky: list          # [history.Flaky]


def page_model(junit_path, output, history=None, title=None):
    """The ``Page`` for ``junit_path`` rendered to ``output`` (``history``: a database path or None)."""
    junit_path, here = Path(junit_path), Path(output).parent
    suites = load_suites(junit_path)
    past = None
    db = Path(history) if history is not None else None
    if db is not None and db.is_file():
        from .table import column_key
        past = history_db.check_history(db, {column_key(s) for s in suites})
    matrix = build_matrix(suites, past=past)
    boards = sorted({c.board for c in matrix.columns})
    title = title or (f"pkvmlab: {matrix.columns[0].title}" if len(matrix.columns) == 1
                      else f"pkvmlab lab report: {len(matrix.columns)} board/kernel/mode combinations")
    notes, note_of = _notes(matrix)
    failures, failure_of = _failures(matrix, here)

    def href(path):
        return _href(path, here)
    page = Page(title=title, junit_href=href(junit_path), junit_name=junit_path.name, boards=boards,
                generated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                matrix=matrix, totals=matrix.totals(), notes=notes, note_of=note_of, failures=failures,
                failure_of=failure_of, href=href, findings=matrix.findings(),
                fact_labels=list(dict.fromkeys(label for c in matrix.columns for label in c.facts)),
                detail_labels=list(dict.fromkeys(label for _, r in matrix.runs() for label in r.details)))
    if db is not None:
        page.history_path = str(db)
        page.trends = _trends(db, boards) if db.is_file() else None
    return page


def headline(cell):
    """The one measured value a cell shows: the probe's ``outcome`` if any, else the first value."""
    if cell.outcome in (record.SKIPPED, record.MISSING) or not cell.measured:
        return ""
    if "outcome" in cell.measured:
        return cell.measured["outcome"]
    key, value = next(iter(cell.measured.items()))
    return f"{key}={value}"


def tooltip(cell):
    return "\n".join([cell.message.strip(), *(f"{k} = {v}" for k, v in cell.measured.items())]).strip()


def _notes(matrix):
    """Skip reasons and findings, numbered once per distinct text; cells point to them."""
    numbers, where, note_of = {}, {}, {}
    for row in matrix.rows:
        for position, (cell, column) in enumerate(zip(row.cells, matrix.columns, strict=True)):
            if cell.outcome in (record.SKIPPED, record.XFAILED) or cell.kind == record.FINDING:
                number = numbers.setdefault((cell.kind, cell.message.strip()), len(numbers) + 1)
                where.setdefault(number, {}).setdefault(column.title, []).append(row.label)
                note_of[(row.key, position)] = number
    notes = [Note(number, kind, message or "(no reason given)", list(where[number].items()))
             for (kind, message), number in numbers.items()]
    return notes, note_of


def _failures(matrix, here):
    items, anchors = [], {}
    for row in matrix.rows:
        for position, (cell, column) in enumerate(zip(row.cells, matrix.columns, strict=True)):
            if cell.outcome not in (record.FAILED, record.ERROR):
                continue
            anchor = anchors[(row.key, position)] = f"failure-{len(anchors) + 1}"
            log = cell.log_path or column.log_path
            items.append(Failure(anchor=anchor, column=column, row=row, cell=cell,
                                 console="\n".join(_console_lines(cell.system_out)[-CONSOLE_LINES:]),
                                 log=_href(log, here) if log else ""))
    return items, anchors


def _trends(db_path, boards):
    points = history_db.board_trend(db_path)
    per_board = []
    for board in sorted({p.board for p in points}, key=lambda b: (b not in boards, b)):
        mine = [p for p in points if p.board == board]
        boot, rate = {}, {}
        for p in mine:
            series = p.suite.split("/", 1)[-1]
            boot.setdefault(series, []).append((p.started, p.boot_seconds, f"{p.run_id}: {p.boot_seconds} s"))
            value = None if p.pass_rate is None else 100 * p.pass_rate
            rate.setdefault(series, []).append((p.started, value, f"{p.run_id}: {p.passed} passed, {p.failed} "
                                                                  f"failed, {p.errors} errors, {p.xfailed} known, "
                                                                  f"{p.skipped} skipped"))
        per_board.append((board, len({p.run_id for p in mine}),
                          [line_chart(f"{board}: boot seconds", boot, "s"),
                           line_chart(f"{board}: pass rate", rate, "%", y_max=100, y_format="{:.0f}")]))
    return Trends(points=len(points), boards=per_board, flaky=history_db.flaky_tests(db_path))


def _console_lines(text):
    """The console excerpt as lines, without pytest's section banners, terminal queries and the case's
    pkvmlab block (measured values, finding, attachment: the page shows those from the properties)."""
    from .cases import pkvmlab_block
    text, _ = pkvmlab_block(text)
    text = re.sub(r"#x1B\[[0-9;?]*[A-Za-z]|\x1b\[[0-9;?]*[A-Za-z]", "", text.replace("\r", ""))
    return [line for line in text.strip("\n").splitlines() if not re.fullmatch(r"-{3,} .* -{3,}", line)]


def _href(path, here):
    """A link from the page's directory to ``path`` (relative, so the report directory can move)."""
    path = str(path)
    if os.path.isabs(path) and not os.path.isabs(str(here)):
        here = os.path.abspath(here)
    return Path(os.path.relpath(path, here)).as_posix()


def _cut(text, limit=MEASURED_CHARS):
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""
