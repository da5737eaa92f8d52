"""Merge the JUnit files of many runs and boards into one file a dashboard ingests.

junitparser reads and builds the XML, but its own merge (``+``) is not used:
it puts ``skipped`` on ``<testsuites>`` (junit-10.xsd rejects that), rewrites
each suite's time as the sum of its cases and folds suites that compare equal
into one.  Here every input suite is copied whole (properties, times, cases),
renamed ``board/kernel-release/mode`` from its ``pkvmlab.*`` properties so
dashboards group it, and its testcase classnames are prefixed with that name
because GitLab tells tests apart by classname + name only (two boards'
``test_boot_el`` would otherwise count once); a suite written with ``pkvmlab.identity``
(``report.identity``) already has board-qualified classnames and keeps them, so a check has the
same (classname, name) in a single run, a matrix cell and every merge.  A bad input is rejected with its
path and the reason; the others still merge.  The result is validated and
written atomically, or not at all.
"""

import os
import re
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import JUnitXml

from .identity import qualified_classname
from .junit import (
    SCHEMA_PATH,
    JUnitReadError,
    parse_junit,
    suite_from_junitparser,
    validate_junit,
    write_junit,
)

XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
ATTACHMENT = re.compile(r"\[\[ATTACHMENT\|([^\]]+)\]\]")


@dataclass(frozen=True)
class Rejected:
    """An input left out of the merge, and why (parse error, schema problems, no test cases)."""

    path: Path
    reason: str

    def __str__(self):
        return f"{self.path}: {self.reason}"


@dataclass
class MergeResult:
    output: Path
    written: bool = False
    suites: list = field(default_factory=list)     # suite names in the merged file, in order
    rejected: list = field(default_factory=list)   # [Rejected]
    notes: list = field(default_factory=list)      # renames and fallbacks a person may want to know

    @property
    def exit_code(self):
        """0 when everything merged, 1 when an input was rejected or nothing could be written."""
        return 0 if self.written and not self.rejected else 1


def merge_junit(inputs, output, name="pkvmlab"):
    """Merge the JUnit files ``inputs`` into ``output``; see ``MergeResult`` for what happened.

    Raises InvalidJUnitError (and writes nothing) if the merged XML failed the
    schema, which would be a bug here: each input was validated first.
    """
    output = Path(output)
    result = MergeResult(output=output)
    root = JUnitXml(name)
    used = set()
    for path in map(Path, inputs):
        suites, reason = _read_input(path)
        if reason:
            result.rejected.append(Rejected(path, reason))
            continue
        for suite in suites:
            final = _add_suite(root, suite, path, output, used, result.notes)
            used.add(final)
            result.suites.append(final)
    if not result.suites:
        result.notes.append(f"nothing to merge: {output} was not written")
        return result
    _set_totals(root)
    write_junit(output, XML_DECLARATION + root.tostring())
    result.written = True
    return result


def _read_input(path):
    """(junitparser suites, None) for a usable input, else (None, the reason to reject it)."""
    try:
        suites = list(parse_junit(path))
    except JUnitReadError as err:
        return None, err.reason
    problems = [p.removeprefix(str(path)).lstrip(":") for p in validate_junit(path)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return None, f"fails {SCHEMA_PATH.name}:{';'.join(problems[:3])}{more}"
    if not any(len(suite) for suite in suites):
        return None, "holds no test cases (did the run start any test?)"
    return suites, None


def _add_suite(root, suite, source, output, used, notes):
    suite = deepcopy(suite)
    view = suite_from_junitparser(suite, source)
    name = view.combination
    if name is None:
        name = suite.name or source.parent.name
        notes.append(f"{source}: suite '{name}' has no pkvmlab.board/kernel_release/kvm_arm_mode "
                     "properties: its name is kept")
    if name in used:
        run_id = view.prop("run_id") or source.parent.name
        renamed = f"{name}@{run_id}"
        counter = 2
        while renamed in used:
            renamed, counter = f"{name}@{run_id}#{counter}", counter + 1
        notes.append(f"{source}: a second '{name}' suite is named '{renamed}'")
        name = renamed
    suite.name = name
    for case in suite.iterchildren(suite.testcase):
        if view.identity:
            # Written with its identity (``report.identity``): the same check keeps the same
            # (classname, name) in a single run, a matrix cell and any merge of them.
            case.classname = qualified_classname(view.identity, case.classname or "")
            _rebase_attachments(case, source, output)
            continue
        # Without the prefix of an earlier merge (a matrix run's junit.xml is itself a merge).
        classname = view.plain_classname(case.classname or "")
        case.classname = f"{name}.{classname}" if classname else name
    for prop in suite.properties():
        # The run's console log and each failing test's (``<test>.console_log``) are relative to the
        # run's directory: make them relative to the merged file's, so the links still lead there.
        if prop.name.endswith(".console_log") and prop.value and not os.path.isabs(prop.value):
            target = source.parent / prop.value
            prop.value = os.path.relpath(target, output.parent)
    root.append(suite)
    return name


def _rebase_attachments(case, source, output):
    """``[[ATTACHMENT|path]]`` lines of the case's system-out made relative to the merged file's directory."""
    out = case._elem.find("system-out")
    if out is None or not out.text or "[[ATTACHMENT|" not in out.text:
        return

    def rebase(match):
        path = match.group(1)
        if os.path.isabs(path):
            return match.group(0)
        return f"[[ATTACHMENT|{os.path.relpath(source.parent / path, output.parent)}]]"
    out.text = ATTACHMENT.sub(rebase, out.text)


def _set_totals(root):
    """Totals on <testsuites> from the suites' own attributes (never ``skipped``: junit-10.xsd has none).

    The time is the wall time the suites span, from the first one's start to the last one's end (a
    matrix's cells run in parallel: their sum is no time anything took); the sum only when a suite
    has no timestamp.
    """
    totals = {"tests": 0, "failures": 0, "errors": 0}
    spans = []
    for suite in root:
        for key in totals:
            totals[key] += int(suite._elem.get(key) or 0)
        spans.append((_timestamp(suite._elem.get("timestamp")), float(suite._elem.get("time") or 0)))
    for key, value in totals.items():
        root._elem.set(key, str(value))
    if spans and all(start is not None for start, _ in spans):
        first = min(start for start, _ in spans)
        time = max((start - first).total_seconds() + seconds for start, seconds in spans)
    else:
        time = sum(seconds for _, seconds in spans)
    root._elem.set("time", f"{time:.3f}")


def _timestamp(text):
    """A suite's ISO 8601 timestamp as an aware datetime (naive ones taken as UTC), or None."""
    import datetime
    try:
        value = datetime.datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
