"""The matrix command's Markdown table, from the report's own model (``table``) and a template.

``pkvmlab matrix`` prints this and writes it as ``matrix.md``: rows kernel × emulator × CPU model,
columns KVM modes, each cell the combination's headline facts and the counts of its latest run, an
emulator artifact named where the emulator alone changed a check's outcome.  There is no second
table model: it is ``table.pivot`` of the same ``Matrix`` the HTML page shows.
"""

import re

from . import record
from .html import environment
from .junit import load_suites
from .table import build_matrix, pivot


def render_markdown(junit_path, title, banner=""):
    """The Markdown of the (merged) JUnit file ``junit_path``, headed ``title`` and ``banner``."""
    matrix = build_matrix(load_suites(junit_path))
    modes, rows = pivot(matrix)
    return environment().get_template("matrix.md.j2").render(
        title=title, banner=banner, modes=modes, rows=rows, findings=matrix.findings(),
        kvm=_kvm, verdict=_verdict, notes=lambda column: _notes(matrix, column))


def _kvm(column):
    """The kernel's KVM line, short ("Protected hVHE"), else the KVM mode property."""
    line = column.latest.kvm_line or column.facts.get("KVM mode", "?")
    return re.sub(r"^kvm \[\d+\]: | mode initialized successfully$", "", line)


def _verdict(column):
    counts = column.counts
    bad = sum(n for kind, n in counts.items() if record.status_of(kind) in (record.FAILED, record.ERROR))
    known = sum(n for kind, n in counts.items() if record.status_of(kind) == record.XFAILED)
    return (f"{counts[record.PASS]} pass, " + (f"{known} known, " if known else "")
            + f"{counts[record.SKIP]} skip, {bad} fail")


def _notes(matrix, column):
    position = matrix.columns.index(column)
    return [note for row in matrix.rows for note in row.cells[position].notes]
