"""One self-contained HTML page per run or per merged lab report.

Everything is inline (CSS, SVG charts; no script, no fonts, no images) so the
page opens from a CI artefact, a mail or an archive offline and looks the same
in ten years.  Read top-down: the outcome counts; the matrix from ``table``
(checks x board/kernel/mode, coloured and labelled so it reads without colour
too) headed by the measured facts (boot EL, KVM mode, boot seconds, what the
EL probe saw) and the console log links; the reasons of skips and known
findings as numbered notes the cells point to; each failure with its message
and console excerpt; where each column came from; and, given the history
database, boot time and pass rate per board over time and the tests that flip.
"""

import datetime
import os
import re
from html import escape
from pathlib import Path

from . import history as history_db
from .atomic import atomic_write_text
from .charts import line_chart
from .junit import ERROR, FAILED, OUTCOMES, PASSED, SKIPPED, XFAILED, load_suites
from .table import build_matrix

LABELS = {PASSED: "pass", FAILED: "FAIL", ERROR: "ERROR", XFAILED: "known", SKIPPED: "skip", "missing": "—"}
NAMES = {PASSED: "passed", FAILED: "failed", ERROR: "errors", XFAILED: "known findings (xfail)",
         SKIPPED: "skipped"}
CONSOLE_LINES = 40   # failing cases carry a trimmed console already; show its tail
MEASURED_CHARS = 60  # one measured value per cell, cut to this; the cell's tooltip has them all

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#1b1b1b;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}h3{font-size:1em;margin:1em 0 .3em}
.meta{color:#555;margin:0 0 .8em}
.summary span{display:inline-block;padding:.15em .7em;margin-right:.4em;border-radius:3px;font-weight:600}
.summary span.zero{opacity:.45;font-weight:400}
table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.25em .45em;vertical-align:top;text-align:left}
thead th{background:#f1f1f1;font-weight:600}.matrix th.check{white-space:nowrap;font-weight:500}
.matrix thead th.col{min-width:9em;max-width:16em}.matrix thead .kernel,.matrix thead .mode{font-weight:400}
.matrix thead .run{font:11px ui-monospace,monospace;font-weight:400;color:#666;overflow-wrap:anywhere}
.matrix .fact td.none{color:#999;font-weight:400}
.matrix thead .verdict{margin-top:.3em;padding:.1em .3em;border-radius:3px;font-size:12px;font-weight:600}
.matrix thead .col-ok .verdict{background:#c9efc4}.matrix thead .col-bad .verdict{background:#f5b8b8}
.matrix .group th{background:#fafafa;color:#555;font-size:.85em;text-transform:uppercase;letter-spacing:.05em}
.matrix .fact th,.matrix .fact td{background:#f4f7fb;font-size:.92em}.matrix .fact td{font-weight:600}
td.cell{min-width:7em;max-width:16em}.outcome{font-weight:700}
.passed{background:#c9efc4}.failed{background:#f5b8b8}.error{background:#f7d08a}
.xfailed{background:#e6d9f5}.skipped{background:#e6e6e6;color:#333}.missing{background:#fff;color:#999}
sup{font-weight:600}sup a{color:#333}
.measured{font:12px ui-monospace,monospace;color:#234;overflow-wrap:anywhere}
.reason{font-size:12px;color:#5a0000}
.notes{font-size:13px;padding-left:2.2em;margin:.6em 0}.notes li{margin:.2em 0}
.notes .tag{display:inline-block;padding:0 .4em;border-radius:3px;font-weight:600;margin-right:.3em}
.notes .where{color:#555}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.5em;overflow:auto;max-height:24em;font-size:12px}
.runs td,.runs th{font-size:12px}
.chart .tick{font-size:10px;fill:#555}
.legend{list-style:none;padding:0;margin:.2em 0 0 3em;font-size:12px}
figure{margin:0}.charts{display:flex;flex-wrap:wrap;gap:1em}.empty{color:#777}
.flaky span{display:inline-block;padding:0 .3em;margin:0 .1em;border-radius:2px;font-size:12px}
"""


def render_html(junit_path, output=None, history=None, title=None):
    """Write the report page for ``junit_path`` (default ``<dir>/report.html``); returns its path.

    ``history`` is a history database path; the trend view is left out without one.
    """
    junit_path = Path(junit_path)
    output = Path(output) if output else junit_path.parent / "report.html"
    page = build_page(junit_path, output, history, title)
    atomic_write_text(output, page)
    return output


def build_page(junit_path, output, history=None, title=None):
    """The page as text (no I/O besides reading the inputs)."""
    suites = load_suites(junit_path)
    matrix = build_matrix(suites)
    boards = sorted({c.board for c in matrix.columns})
    title = title or (f"pkvmlab: {matrix.columns[0].title}" if len(matrix.columns) == 1
                      else f"pkvmlab lab report: {len(matrix.columns)} board/kernel/mode combinations")
    here = output.parent
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    notes = _Notes(matrix)
    failures = _failure_ids(matrix)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="meta">From <a href="{escape(_href(junit_path, here))}">{escape(junit_path.name)}</a>, '
             f"boards: {escape(', '.join(boards))}; generated {generated}.</p>",
             _summary(matrix), _matrix_table(matrix, here, notes, failures), notes.html(),
             _failures(matrix, here, failures), _runs(matrix, here)]
    if history is not None:
        parts.append(_trends(Path(history), boards))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(matrix):
    totals = matrix.totals()
    spans = "".join(f'<span class="{o}{"" if totals[o] else " zero"}" data-total="{o}">{totals[o]} {NAMES[o]}'
                    "</span>" for o in OUTCOMES)
    return f'<p class="summary">{spans}</p>'


class _Notes:
    """Skip reasons and known findings, numbered once per distinct text; cells point to them."""

    def __init__(self, matrix):
        self.matrix = matrix
        self.numbers = {}    # (outcome, message) -> number
        self.where = {}      # number -> {column title: [check labels]}
        for row in matrix.rows:
            for cell, column in zip(row.cells, matrix.columns, strict=True):
                if cell.outcome in (SKIPPED, XFAILED):
                    number = self.numbers.setdefault((cell.outcome, cell.message.strip()), len(self.numbers) + 1)
                    self.where.setdefault(number, {}).setdefault(column.title, []).append(row.label)

    def ref(self, cell):
        number = self.numbers.get((cell.outcome, cell.message.strip()))
        return "" if number is None else f'<sup><a href="#note-{number}">{number}</a></sup>'

    def html(self):
        if not self.numbers:
            return ""
        items = []
        for (outcome, message), number in self.numbers.items():
            where = "; ".join(f"{escape(title)}: " + (escape(checks[0]) if len(checks) == 1
                                                       else f"{len(checks)} checks")
                              for title, checks in self.where[number].items())
            text = message or "(no reason given)"
            items.append(f'<li id="note-{number}" value="{number}" data-note="{number}" data-outcome="{outcome}">'
                         f'<span class="tag {outcome}">{LABELS[outcome]}</span>{escape(text)} '
                         f'<span class="where">— {where}</span></li>')
        return ('<h3>Why skipped, and known findings</h3><ol class="notes" id="notes">'
                + "".join(items) + "</ol>")


def _failure_ids(matrix):
    """(row key, column index) -> anchor of the failure's entry, for failed and errored cells."""
    ids = {}
    for row in matrix.rows:
        for position, cell in enumerate(row.cells):
            if cell.outcome in (FAILED, ERROR):
                ids[(row.key, position)] = f"failure-{len(ids) + 1}"
    return ids


def _matrix_table(matrix, here, notes, failures):
    head = []
    for c in matrix.columns:
        counts = c.counts
        verdict = " · ".join(f"{counts[o]} {LABELS[o].lower()}" for o in OUTCOMES if counts.get(o)) or "no tests"
        head.append(f'<th scope="col" class="col {"col-bad" if c.bad else "col-ok"}" data-suite="{escape(c.title)}">'
                    f'<div class="board">{escape(c.board)}</div><div class="kernel">{escape(c.kernel)}</div>'
                    f'<div class="mode">kvm-arm.mode={escape(c.mode)}</div>'
                    f'<div class="run" title="run {escape(c.details.get("run", ""))}">'
                    f'{escape(_cut(c.details.get("run", ""), 40))}</div>'
                    f'<div class="verdict">{escape(verdict)}</div></th>')
    rows = [f'<h2>Matrix</h2><table class="matrix" id="matrix"><thead><tr><th>check</th>{"".join(head)}'
            "</tr></thead><tbody>"]
    labels = [label for c in matrix.columns for label in c.facts]
    for label in dict.fromkeys(labels):
        cells = "".join(f'<td data-fact="{escape(label)}" data-suite="{escape(c.title)}">'
                        f"{escape(c.facts[label])}</td>" if label in c.facts else
                        f'<td data-fact="{escape(label)}" data-suite="{escape(c.title)}" class="none" '
                        'title="not measured in this run">—</td>' for c in matrix.columns)
        rows.append(f'<tr class="fact"><th scope="row">{escape(label)}</th>{cells}</tr>')
    logs = "".join(f'<td><a href="{escape(_href(c.log_path, here))}">console log</a></td>' if c.log_path
                   else "<td></td>" for c in matrix.columns)
    rows.append(f'<tr class="fact"><th scope="row">logs</th>{logs}</tr>')
    group = None
    for row in matrix.rows:
        if row.group != group:
            group = row.group
            rows.append(f'<tr class="group"><th colspan="{len(matrix.columns) + 1}">{escape(group)}</th></tr>')
        cells = "".join(_cell(row, cell, column, notes, failures.get((row.key, position)))
                        for position, (cell, column) in enumerate(zip(row.cells, matrix.columns, strict=True)))
        rows.append(f'<tr class="check"><th scope="row" class="check" title="{escape(row.key)}">'
                    f"{escape(row.label)}</th>{cells}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _cell(row, cell, column, notes, failure_id):
    body = [f'<span class="outcome">{LABELS[cell.outcome]}</span>{notes.ref(cell)}']
    shown = _headline(cell)
    if shown:
        body.append(f'<div class="measured">{escape(_cut(shown))}</div>')
    if cell.outcome in (FAILED, ERROR):
        body.append(f'<div class="reason">{escape(_cut(_first_line(cell.message), 120))}</div>')
        if failure_id:
            body.append(f'<div><a href="#{failure_id}">console and traceback</a></div>')
    tooltip = "\n".join([cell.message.strip(), *(f"{k} = {v}" for k, v in cell.measured.items())]).strip()
    return (f'<td class="cell {cell.outcome}" data-outcome="{cell.outcome}" data-check="{escape(row.label)}" '
            f'data-suite="{escape(column.title)}" title="{escape(tooltip)}">{"".join(body)}</td>')


def _headline(cell):
    """The one measured value a cell shows: the probe's ``outcome`` if any, else the first value."""
    if cell.outcome in (SKIPPED, "missing") or not cell.measured:
        return ""
    if "outcome" in cell.measured:
        return cell.measured["outcome"]
    key, value = next(iter(cell.measured.items()))
    return f"{key}={value}"


def _failures(matrix, here, failures):
    items = []
    for row in matrix.rows:
        for position, (cell, column) in enumerate(zip(row.cells, matrix.columns, strict=True)):
            anchor = failures.get((row.key, position))
            if anchor is None:
                continue
            console = "\n".join(_console_lines(cell.system_out)[-CONSOLE_LINES:])
            log = cell.log_path or column.log_path
            link = f' (<a href="{escape(_href(log, here))}">full console log</a>)' if log else ""
            items.append(
                f'<li id="{anchor}" class="{cell.outcome}-item" data-suite="{escape(column.title)}" '
                f'data-check="{escape(row.label)}" data-class="{escape(cell.failure_class)}">'
                f"<b>{escape(column.title)}</b> · {escape(row.label)}: "
                + (f'<span class="tag class-{escape(cell.failure_class)}">{escape(cell.failure_class)}</span> '
                   if cell.failure_class else "")
                + f"{escape(_first_line(cell.message))}{link}"
                + (f'<details open><summary>console</summary><pre class="console">{escape(console)}</pre></details>'
                   if console else "")
                + (f"<details><summary>traceback</summary><pre>{escape(cell.detail)}</pre></details>"
                   if cell.detail else "") + "</li>")
    if not items:
        return '<h2>Failures</h2><p class="empty">none</p>'
    return '<h2>Failures</h2><ul class="failures">' + "".join(items) + "</ul>"


def _runs(matrix, here):
    labels = list(dict.fromkeys(label for c in matrix.columns for label in c.details))
    head = "".join(f"<th>{escape(label)}</th>" for label in ["board/kernel/mode", *labels, "JUnit"])
    rows = []
    for c in matrix.columns:
        cells = "".join(f"<td>{escape(c.details.get(label, ''))}</td>" for label in labels)
        junit = f'<a href="{escape(_href(c.junit_path, here))}">{escape(Path(c.junit_path).name)}</a>'
        rows.append(f"<tr><td>{escape(c.title)}</td>{cells}<td>{junit}</td></tr>")
    return (f'<h2>Runs</h2><table class="runs" id="runs"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _trends(db_path, boards):
    if not db_path.is_file():
        return f'<h2>Trends</h2><p class="empty">no history at {escape(str(db_path))} yet</p>'
    points = history_db.board_trend(db_path)
    flaky = history_db.flaky_tests(db_path)
    parts = [f'<h2>Trends</h2><p class="meta">From {escape(str(db_path))}: {len(points)} recorded board runs.</p>']
    for board in sorted({p.board for p in points}, key=lambda b: (b not in boards, b)):
        mine = [p for p in points if p.board == board]
        boot = {}
        rate = {}
        for p in mine:
            series = p.suite.split("/", 1)[-1]
            boot.setdefault(series, []).append((p.started, p.boot_seconds, f"{p.run_id}: {p.boot_seconds} s"))
            value = None if p.pass_rate is None else 100 * p.pass_rate
            rate.setdefault(series, []).append((p.started, value, f"{p.run_id}: {p.passed} passed, {p.failed} "
                                                                  f"failed, {p.errors} errors, {p.xfailed} known, "
                                                                  f"{p.skipped} skipped"))
        runs = len({p.run_id for p in mine})
        parts.append(f'<h3>{escape(board)} <span class="meta">({runs} run{"s" if runs != 1 else ""})</span></h3>'
                     f'<div class="charts" data-board="{escape(board)}">'
                     + line_chart(f"{board}: boot seconds", boot, "s")
                     + line_chart(f"{board}: pass rate", rate, "%", y_max=100, y_format="{:.0f}") + "</div>")
    parts.append(_flaky_table(flaky))
    return "\n".join(parts)


def _flaky_table(flaky):
    if not flaky:
        return '<h3>Flaky tests</h3><p class="empty">no test changed its verdict between runs</p>'
    rows = ['<h3>Flaky tests</h3><table class="flaky" id="flaky"><thead><tr><th>board/kernel/mode</th>'
            "<th>test</th><th>flips</th><th>runs, oldest first</th></tr></thead><tbody>"]
    for item in flaky:
        runs = "".join(f'<span class="{o}" title="{escape(run)} {escape(started)}: {o}">{LABELS.get(o, o)}</span>'
                       for run, started, o in item.history)
        rows.append(f'<tr data-test="{escape(item.test)}" data-suite="{escape(item.suite)}">'
                    f"<td>{escape(item.suite)}</td><td>{escape(item.test)}</td>"
                    f"<td>{item.flips}</td><td>{runs}</td></tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


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
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""
