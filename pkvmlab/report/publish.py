"""After a run: add it to the history and write its page (and Allure's categories), never failing the run.

The harness calls ``publish_run`` once the run's JUnit file is in place (the
plugin after ``pkvmlab run``, the matrix after its merge).  The JUnit file is
the result; the history row and ``report.html`` are conveniences, so a problem
with them is reported as a line of text and never turns a passing run into a
failing one.  Except a full disk: that is the lab's problem and the run must
say so (exit code 11), so the caller gets the errors in ``problems`` and
:func:`disk_full` picks that one out.
"""

import errno
import sqlite3
from pathlib import Path

from ..errors import PkvmlabError
from .allure import write_categories
from .history import record_run
from .html import render_html

HISTORY_NAME = "history.sqlite"


def disk_full(problems):
    """The first error among ``problems`` that says the disk is full (ENOSPC, SQLite's "full"), or None."""
    for err in problems:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        if isinstance(err, sqlite3.OperationalError) and "full" in str(err):
            return err
    return None


def publish_run(junit_path, history_db, record=True, page=None, problems=None):
    """Record ``junit_path`` in ``history_db`` (if ``record``) and write its page (default report.html beside it).

    Returns the lines to show the user: what was written, or why not.  The errors
    met on the way are appended to ``problems`` (a list), when given.
    """
    junit_path, history_db = Path(junit_path), Path(history_db)
    problems = [] if problems is None else problems
    lines = []
    if record:
        try:
            points = record_run(history_db, junit_path)
        except (PkvmlabError, OSError, sqlite3.Error) as err:
            problems.append(err)
            lines.append(f"pkvmlab: history not updated ({history_db}): {err}")
        else:
            lines.append(f"pkvmlab: history {history_db}: recorded {len(points)} suite"
                         f"{'s' if len(points) != 1 else ''} of {junit_path}")
    history = history_db if history_db.is_file() else None
    try:
        try:
            written = render_html(junit_path, page, history=history)
        except sqlite3.Error as err:       # a broken history costs the trend view, not the page
            problems.append(err)
            lines.append(f"pkvmlab: no trend view ({history_db}): {err}")
            written = render_html(junit_path, page, history=None)
    except (PkvmlabError, OSError, sqlite3.Error) as err:
        problems.append(err)
        lines.append(f"pkvmlab: no HTML report for {junit_path}: {err}")
    else:
        lines.append(f"pkvmlab: HTML report {written}")
    try:
        write_categories(junit_path.parent)       # Allure lists the findings (report.allure); no line when fine
    except OSError as err:
        problems.append(err)
        lines.append(f"pkvmlab: no Allure categories for {junit_path}: {err}")
    return lines
