"""What a dashboard shows of each test case: its identity, its finding, its values, its log.

pytest's JUnit file is finished here (``pkvmlab.plugin.hooks._finish_report``, after
``junit.apply_outcomes``) so that every consumer (GitLab, Allure, junit2html, xunit-viewer,
Jenkins) reads it right, since they read only ``classname``, ``name``, the result element's
``type`` and ``message`` and the case's ``system-out``:

* classnames carry the run's identity (``pkvmlab.report.identity``);
* a waived check is ``<skipped type="pkvmlab.finding" message="FINDING (waived): ...">`` for a
  board's known finding, ``<skipped type="pkvmlab.finding.artifact" message="EMULATOR ARTIFACT
  (waived): ...">`` for an emulator artifact (the types are the run-record contract's, ``record``:
  readers go by the type, the message is for people), with the evidence in its ``system-out``; in strict mode a known
  finding is a ``<failure type="pkvmlab.finding.waived" message="waived finding: <reason>
  (<reference>)">`` instead (written by the suite, typed by the plugin);
* each case's measured values are ``key = value`` lines in its ``system-out`` (per-testcase
  ``<properties>`` are invalid in junit-10.xsd);
* failing cases and findings name the console log as ``[[ATTACHMENT|console.log]]`` (relative to the
  JUnit file: Jenkins' and GitLab's attachment syntax);
* no property value is an absolute host path;
* the session's boot is not booked to the test that happened to trigger it: that case's
  ``time`` loses the boot's seconds (kept in ``pkvmlab.boot_seconds`` and the suite's time),
  and its system-out says so;
* the root is named ``pkvmlab``, as the matrix's merged file is (pytest says "pytest tests").
"""

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .identity import qualified_classname
from .record import ARTIFACT_TYPE, FINDING_TYPE, PYTEST_XFAIL_TYPE, STRICT_FINDING_TYPE  # noqa: F401 - re-exported

FINDING_PREFIX = "FINDING (waived): "
ARTIFACT_PREFIX = "EMULATOR ARTIFACT (waived): "
STRICT_PREFIX = "waived finding: "
# The case's pkvmlab block in system-out starts with this banner (after pytest's own sections).
BANNER = "----- pkvmlab -----"


@dataclass(frozen=True)
class Finding:
    """A check the board file waives, as it was met in one test."""

    kind: str          # "finding" (expect.known_findings) or "artifact" (expect.emulator_artifacts)
    reason: str
    reference: str
    evidence: str      # what was measured (the verdict's message)
    strict: bool = False

    @property
    def junit_type(self):
        """The ``<skipped>`` type of this waived check (``record``)."""
        return ARTIFACT_TYPE if self.kind == "artifact" else FINDING_TYPE

    @property
    def message(self):
        """The JUnit message: what every viewer shows first."""
        if self.kind == "artifact":
            return f"{ARTIFACT_PREFIX}{self.reason} ({self.reference}); measured: {self.evidence}"
        if self.strict:
            return f"{STRICT_PREFIX}{self.reason} ({self.reference})"
        return f"{FINDING_PREFIX}{self.reason} ({self.reference}); measured: {self.evidence}"

    def lines(self):
        state = "fails (strict mode)" if self.strict else "waived, not failing"
        what = "emulator artifact" if self.kind == "artifact" else "known finding"
        return [f"{what}: {state}", f"reason = {self.reason}", f"reference = {self.reference}",
                f"evidence = {self.evidence}"]


def case_address(nodeid):
    """(classname, name) pytest's junitxml writes for ``nodeid``."""
    from _pytest.junitxml import mangle_test_address
    names = mangle_test_address(nodeid)
    return ".".join(names[:-1]), names[-1]


def portable_path(value, run_dir, roots=()):
    """``value`` without the host's absolute path: relative to the run directory when inside it, else
    ``$NAME/rest`` for one of ``roots`` ((name, path) pairs), else the file name only."""
    if not isinstance(value, str) or not value.startswith("/"):
        return value
    path = Path(value)
    for name, root in (("", run_dir), *roots):
        try:
            rest = path.relative_to(root)
        except ValueError:
            continue
        return os.path.join(f"${name}", rest.as_posix()) if name else (rest.as_posix() or ".")
    return path.name


def finish_cases(data, identity, measured=None, findings=None, console_log=None, run_dir=None, roots=(),
                 boot=None):
    """pytest's JUnit ``data`` (bytes) as dashboards should read it; see the module docstring.

    ``measured`` and ``findings`` map node ids to ``{key: value}`` and to ``Finding``;
    ``console_log`` is the log's path relative to the JUnit file (None: the board has none);
    ``boot`` is (node id of the test whose setup booted the board, seconds the boot took).
    """
    by_address = {}
    for nodeid, values in (measured or {}).items():
        by_address.setdefault(case_address(nodeid), {})["measured"] = values
    for nodeid, finding in (findings or {}).items():
        by_address.setdefault(case_address(nodeid), {})["finding"] = finding
    boot_address, boot_seconds = (case_address(boot[0]), boot[1]) if boot and boot[0] else (None, 0)
    root = ET.fromstring(data)
    if root.tag == "testsuites":
        root.set("name", "pkvmlab")
    for case in root.iter("testcase"):
        address = (case.get("classname") or "", case.get("name") or "")
        info = by_address.get(address, {})
        finding = info.get("finding")
        lines = []
        if address == boot_address and boot_seconds > 0:
            took = float(case.get("time") or 0)
            case.set("time", f"{max(0.0, took - boot_seconds):.3f}")
            lines.append(f"session_boot = {boot_seconds:.3f} s in this test's setup, booked to the run "
                         f"(pkvmlab.boot_seconds), not to this test")
        skipped = case.find("skipped")
        if skipped is not None and skipped.get("type") == PYTEST_XFAIL_TYPE:
            skipped.set("type", finding.junit_type if finding is not None else FINDING_TYPE)
            message = finding.message if finding is not None else skipped.get("message", "")
            if not message.startswith((FINDING_PREFIX, ARTIFACT_PREFIX)):
                message = FINDING_PREFIX + message.removeprefix("reason: ")
            skipped.set("message", message)
        if finding is not None:
            lines += finding.lines()
        for key, value in (info.get("measured") or {}).items():
            lines.append(f"{key} = {_one_line(value)}")
        failing = case.find("failure") is not None or case.find("error") is not None
        if console_log and (failing or finding is not None):
            lines.append(f"[[ATTACHMENT|{console_log}]]")
        if lines:
            out = case.find("system-out")
            if out is None:
                out = ET.SubElement(case, "system-out")
                out.text = ""
            text = out.text or ""
            out.text = text + ("\n" if text and not text.endswith("\n") else "") + "\n".join([BANNER, *lines]) + "\n"
        case.set("classname", qualified_classname(identity, case.get("classname") or ""))
    if run_dir is not None:
        for prop in root.iter("property"):
            prop.set("value", portable_path(prop.get("value"), Path(run_dir), roots))
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="utf-8")


def _one_line(value):
    return " ".join(str(value).split())


def pkvmlab_block(system_out):
    """(console part, pkvmlab block lines) of a case's system-out."""
    head, sep, tail = (system_out or "").partition(BANNER)
    return head, [line for line in tail.splitlines() if line.strip()] if sep else []
