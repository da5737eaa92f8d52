"""One self-contained HTML page per run or per merged lab report.

Everything is inline (CSS, SVG charts; no script, no fonts, no images) so the
page opens from a CI artefact, a mail or an archive offline and looks the same
in ten years.  The page is the matrix from ``table`` (checks x
board/kernel/mode, coloured and labelled so it reads without colour too),
each skip's reason and each failure's message and console excerpt in place,
the measured boot facts, links to the console logs, and, given the history
database, boot time and pass rate per board over time and the tests that flip.
"""

import datetime
import os
from html import escape
from pathlib import Path

from . import history as history_db
from .atomic import atomic_write_text
from .charts import line_chart
from .junit import ERROR, FAILED, PASSED, SKIPPED, load_suites
from .table import build_matrix

LABELS = {PASSED: "pass", FAILED: "FAIL", ERROR: "ERROR", SKIPPED: "skip", "missing": "—"}
CONSOLE_LINES = 40   # failing cases carry a trimmed console already; show its tail

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#1b1b1b;background:#fff}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .4em}
.meta{color:#555;margin:0 0 .8em}
.summary span{display:inline-block;padding:.1em .6em;margin-right:.4em;border-radius:3px}
table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.25em .45em;vertical-align:top;text-align:left}
thead th{background:#f1f1f1;font-weight:600}.matrix th.check{white-space:nowrap;font-weight:500}
.matrix .group th{background:#fafafa;color:#555;font-size:.9em;text-transform:uppercase;letter-spacing:.05em}
.matrix .fact th,.matrix .fact td{background:#f7f9fc;font-size:.92em}
td.cell{min-width:7em;max-width:18em}.outcome{font-weight:700}
.passed{background:#c9efc4}.failed{background:#f5b8b8}.error{background:#f7d08a}
.skipped{background:#e3e3e3;color:#333}.missing{background:#fff;color:#999}
.measured{font:12px ui-monospace,monospace;color:#234}.reason{font-size:12px;color:#333}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.5em;overflow:auto;max-height:24em;font-size:12px}
.flaky td.run{width:1.2em;height:1.2em;padding:0}.chart .tick{font-size:10px;fill:#555}
.legend{list-style:none;padding:0;margin:.2em 0 0 3em;font-size:12px}
figure{margin:0}.charts{display:flex;flex-wrap:wrap;gap:1em}.empty{color:#777}
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
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width,initial-scale=1">',
             f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f'<p class="meta">From <a href="{escape(_href(junit_path, here))}">{escape(junit_path.name)}</a>, '
             f"boards: {escape(', '.join(boards))}; generated {generated}.</p>",
             _summary(matrix), _matrix_table(matrix, here), _failures(matrix)]
    if history is not None:
        parts.append(_trends(Path(history), boards))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _summary(matrix):
    totals = matrix.totals()
    spans = "".join(f'<span class="{o}" data-total="{o}">{totals[o]} {LABELS[o].lower()}</span>'
                    for o in (PASSED, FAILED, ERROR, SKIPPED))
    return f'<p class="summary">{spans}</p>'


def _matrix_table(matrix, here):
    head = "".join(
        f'<th scope="col" data-suite="{escape(c.title)}">{escape(c.board)}<br>{escape(c.kernel)}<br>'
        f"{escape(c.mode)}</th>" for c in matrix.columns)
    rows = [f'<h2>Matrix</h2><table class="matrix" id="matrix"><thead><tr><th>check</th>{head}</tr></thead><tbody>']
    labels = [label for c in matrix.columns for label in c.facts]
    for label in dict.fromkeys(labels):
        cells = "".join(f"<td>{escape(c.facts.get(label, ''))}</td>" for c in matrix.columns)
        rows.append(f'<tr class="fact"><th scope="row">{escape(label)}</th>{cells}</tr>')
    logs = "".join(f'<td><a href="{escape(_href(c.log_path, here))}">console log</a></td>' if c.log_path
                   else "<td></td>" for c in matrix.columns)
    rows.append(f'<tr class="fact"><th scope="row">logs</th>{logs}</tr>')
    group = None
    for row in matrix.rows:
        if row.group != group:
            group = row.group
            rows.append(f'<tr class="group"><th colspan="{len(matrix.columns) + 1}">{escape(group)}</th></tr>')
        cells = "".join(_cell(row, cell, column) for cell, column in zip(row.cells, matrix.columns, strict=True))
        rows.append(f'<tr class="check"><th scope="row" class="check" title="{escape(row.key)}">'
                    f"{escape(row.label)}</th>{cells}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _cell(row, cell, column):
    body = [f'<span class="outcome">{LABELS[cell.outcome]}</span>']
    body += [f'<div class="measured">{escape(k)}={escape(v)}</div>' for k, v in cell.measured.items()]
    if cell.message and cell.outcome != PASSED:
        body.append(f'<div class="reason">{escape(_first_line(cell.message))}</div>')
    return (f'<td class="cell {cell.outcome}" data-outcome="{cell.outcome}" data-check="{escape(row.label)}" '
            f'data-suite="{escape(column.title)}" title="{escape(cell.message)}">{"".join(body)}</td>')


def _failures(matrix):
    items = []
    for row in matrix.rows:
        for cell, column in zip(row.cells, matrix.columns, strict=True):
            if cell.outcome not in (FAILED, ERROR):
                continue
            console = "\n".join(cell.system_out.strip("\n").splitlines()[-CONSOLE_LINES:])
            items.append(
                f'<li class="{cell.outcome}-item"><b>{escape(column.title)}</b> · {escape(row.label)}: '
                f"{escape(_first_line(cell.message))}"
                + (f"<details open><summary>console</summary><pre>{escape(console)}</pre></details>"
                   if console else "")
                + (f"<details><summary>traceback</summary><pre>{escape(cell.detail)}</pre></details>"
                   if cell.detail else "") + "</li>")
    if not items:
        return '<h2>Failures</h2><p class="empty">none</p>'
    return '<h2>Failures</h2><ul class="failures">' + "".join(items) + "</ul>"


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
                                                                  f"failed, {p.errors} errors, {p.skipped} skipped"))
        parts.append(f'<h3>{escape(board)}</h3><div class="charts" data-board="{escape(board)}">'
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
        runs = "".join(f'<span class="{o}" title="{escape(run)} {escape(started)}: {o}">&nbsp;{LABELS[o]}&nbsp;</span> '
                       for run, started, o in item.history)
        rows.append(f'<tr data-test="{escape(item.test)}"><td>{escape(item.suite)}</td><td>{escape(item.test)}</td>'
                    f"<td>{item.flips}</td><td>{runs}</td></tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _href(path, here):
    """A link from the page's directory to ``path`` (relative, so the report directory can move)."""
    path = str(path)
    if os.path.isabs(path) and not os.path.isabs(str(here)):
        here = os.path.abspath(here)
    return Path(os.path.relpath(path, here)).as_posix()


def _first_line(text):
    return text.strip().splitlines()[0] if text.strip() else ""
