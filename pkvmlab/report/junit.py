"""Read JUnit files and check them against the schema Jenkins validates with.

Jenkins' xunit plugin rejects a file that does not validate against
``junit-10.xsd`` (shipped in ``schemas/``, source in the ``.source.txt`` beside
it), and libraries that write JUnit get it wrong in measured ways (a
``skipped`` attribute on ``<testsuites>``, ``disabled``, ``<properties>`` in a
``<testcase>``).  So everything pkvmlab writes passes ``validate_junit`` first,
and everything it reads goes through ``load_suites`` into plain dataclasses the
merge, history and HTML code share.
"""

import functools
import io
from dataclasses import dataclass, field
from pathlib import Path

import xmlschema
from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Skipped

from ..errors import PkvmlabError
from . import record
from .atomic import atomic_write_bytes
from .record import ERROR, FAILED, PASSED, SKIPPED, STATUSES, XFAILED  # noqa: F401 - re-exported

SCHEMA_PATH = Path(__file__).with_name("schemas") / "junit-10.xsd"
JUNIT_ROOTS = ("testsuites", "testsuite")
PREFIX = "pkvmlab."

# The statuses and kinds of a case are the run-record contract's (``record``): re-exported for readers.
OUTCOMES = STATUSES


class JUnitReadError(PkvmlabError):
    """A JUnit file that cannot be read: not there, not XML, or not JUnit.  Names the file and the cause."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class InvalidJUnitError(PkvmlabError):
    """JUnit that pkvmlab was about to write fails junit-10.xsd; nothing was written."""

    def __init__(self, target, problems):
        self.target = str(target)
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:10])
        more = f"\n  ... and {len(self.problems) - 10} more" if len(self.problems) > 10 else ""
        super().__init__(f"{target}: not written, the JUnit fails {SCHEMA_PATH.name}:\n  {shown}{more}")


@functools.lru_cache(maxsize=1)
def junit_schema():
    """The parsed junit-10.xsd (parsing it takes a while: once per process)."""
    return xmlschema.XMLSchema10(str(SCHEMA_PATH))


def validate_junit(source):
    """Problems that would make Jenkins reject ``source`` (a path, or the XML as bytes); empty when valid."""
    if isinstance(source, (bytes, bytearray)):
        where, resource = "<junit>", io.BytesIO(bytes(source))
    else:
        where, resource = str(source), str(source)
    try:
        root = xmlschema.XMLResource(resource).root
    except (OSError, SyntaxError, xmlschema.XMLResourceError) as err:
        return [f"{where}: not readable as XML: {err}"]
    if root.tag not in JUNIT_ROOTS:
        return [f"{where}: root element is <{root.tag}>, JUnit needs <testsuites> or <testsuite>"]
    if isinstance(resource, io.BytesIO):
        resource.seek(0)
    problems = []
    for error in junit_schema().iter_errors(resource):
        line = f":{error.sourceline}" if getattr(error, "sourceline", None) else ""
        problems.append(f"{where}{line}: {error.path or '/'}: {error.reason}")
    return problems


def write_junit(path, data):
    """Write the JUnit ``data`` (bytes) to ``path`` atomically, only if it validates; else InvalidJUnitError.

    The one door for JUnit that pkvmlab produces: a file Jenkins would reject
    is never written, and the previous file at ``path`` stays as it was.
    """
    problems = validate_junit(data)
    if problems:
        raise InvalidJUnitError(path, problems)
    return atomic_write_bytes(path, data)


def name_interrupted_case(data, classname, name, message, error_type=None):
    """pytest's JUnit after an interrupt, with the interrupted test named and marked as an error.

    When a run is stopped (Ctrl-C, SIGTERM) in the middle of a test, pytest
    writes that test as a ``<testcase>`` with neither ``classname`` nor ``name``
    (which junit-10.xsd rejects), or, stopped in the test's setup (the boot),
    writes no case for it at all.  The harness knows which test was running, so
    the case gets its names back (or is added) with an ``<error>`` saying it was
    interrupted.  Returns the new XML as bytes (``data`` unchanged when no case needs it).
    """
    import xml.etree.ElementTree as ET
    root = ET.fromstring(data)
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    nameless = [(suite, case) for suite in suites for case in suite.findall("testcase") if case.get("name") is None]
    named = any(case.get("classname") == classname and case.get("name") == name
                for suite in suites for case in suite.findall("testcase"))
    if not nameless and (named or not suites):
        return data
    if not nameless:    # junit-10.xsd: the cases come after <properties>, before <system-out>/<system-err>
        suite = suites[0]
        children = list(suite)
        at = next((i for i, child in enumerate(children) if child.tag in ("system-out", "system-err")),
                  len(children))
        case = ET.Element("testcase", time="0")
        suite.insert(at, case)
        nameless = [(suite, case)]
    for suite, case in nameless:
        case.set("classname", classname)
        case.set("name", name)
        if not any(case.find(tag) is not None for tag in ("error", "failure", "skipped")):
            error = ET.SubElement(case, "error", message=message)
            error.text = message
            if error_type:
                error.set("type", error_type)
            suite.set("errors", str(int(suite.get("errors", "0")) + 1))
        suite.set("tests", str(len(suite.findall("testcase"))))
    _sum_suites(root)
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="utf-8")


def apply_outcomes(data, outcomes):
    """pytest's JUnit with each failure's ``type`` and one-line ``message`` from pkvmlab.outcome.

    ``outcomes`` maps (nodeid, when) to an Outcome.  pytest writes a setup error's
    message as ``failed on setup with "<last exception>"``, which after labgrid's
    never_retry is ``BootShellStrategy is in broken state``; the first cause
    replaces it, and the type names the failure's class.  Returns bytes
    (``data`` unchanged when nothing matched).
    """
    import xml.etree.ElementTree as ET

    from _pytest.junitxml import mangle_test_address
    wanted = {}
    for (nodeid, when), outcome in outcomes.items():
        if not nodeid:      # the run's, not a test's (interrupted between tests)
            continue
        names = mangle_test_address(nodeid)
        wanted[(".".join(names[:-1]), names[-1], "failure" if when == "call" else "error")] = outcome
    root = ET.fromstring(data)
    changed = False
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            outcome = wanted.get((case.get("classname"), case.get("name"), tag))
            element = case.find(tag)
            if outcome is None or element is None:
                continue
            element.set("type", outcome.type)
            element.set("message", outcome.message)
            changed = True
    if not changed:
        return data
    return b'<?xml version="1.0" encoding="utf-8"?>' + ET.tostring(root, encoding="utf-8")


def _sum_suites(root):
    if root.tag != "testsuites":
        return
    for key in ("tests", "errors", "failures"):
        if root.get(key) is not None:
            root.set(key, str(sum(int(s.get(key, "0")) for s in root.iter("testsuite"))))


@dataclass(frozen=True)
class Case:
    """One ``<testcase>``: its outcome and the text a person needs to see why."""

    classname: str
    name: str
    time: float
    outcome: str           # the status: PASSED, FAILED, ERROR, XFAILED (a waived finding) or SKIPPED
    message: str = ""      # failure/error message, or the skip reason
    detail: str = ""       # the result element's text (traceback, skip location)
    system_out: str = ""   # for failures: the trimmed console log the plugin attached
    failure_type: str = ""  # the result element's type: pkvmlab.<class> (pkvmlab.outcome), or pytest's
    kind: str = record.PASS  # the outcome kind (``record.KINDS``): pass, fail, finding, waived, artifact, ...

    @property
    def failure_class(self):
        """board, configuration, infrastructure, harness or interrupted; None for passes and skips
        and for files written before the classes (or not by pkvmlab)."""
        return record.failure_class(self.kind, self.failure_type)

    @property
    def test_id(self):
        """``classname::name``, how history tells tests apart."""
        return f"{self.classname}::{self.name}" if self.classname else self.name


@dataclass
class Suite:
    """One ``<testsuite>`` with its properties (in file order) and cases."""

    name: str
    source: Path
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0
    timestamp: str = ""
    hostname: str = ""
    property_list: list = field(default_factory=list)   # [(name, value)], duplicates kept
    cases: list = field(default_factory=list)

    @property
    def properties(self):
        return dict(self.property_list)

    def prop(self, key, default=""):
        """The ``pkvmlab.<key>`` property, or ``default``."""
        return self.properties.get(PREFIX + key, default)

    @property
    def identity(self):
        """The classname prefix of this suite's cases (``report.identity``), or "" in older files."""
        from .identity import IDENTITY_PROPERTY
        return self.properties.get(IDENTITY_PROPERTY, "")

    @property
    def combination(self):
        """``board/kernel-release/mode`` (+ ``/qemu-<version>/<cpu model>`` on QEMU boards), how dashboards
        group suites; None without the properties."""
        parts = [self.prop("board"), self.prop("kernel_release"), self.prop("kvm_arm_mode")]
        if not all(parts):
            return None
        if self.prop("emulator"):
            parts += [self.prop("emulator"), self.prop("cpu").split(",", 1)[0] or "?"]
        return "/".join(parts)

    def plain_classname(self, classname):
        """``classname`` without the run's identity (``pkvmlab.identity``, ``report.identity``), or, in
        files written before it, without the ``<suite name>.`` prefix a merge adds (also after a rename
        to ``name@run``)."""
        from .identity import IDENTITY_PROPERTY, plain_classname
        plain = plain_classname(self.properties.get(IDENTITY_PROPERTY), classname)
        if plain is not None:
            return plain
        for name in dict.fromkeys((self.name, self.name.split("@")[0], self.combination)):
            if not name:
                continue
            if classname == name:
                return ""
            if classname.startswith(f"{name}."):
                return classname[len(name) + 1:]
        return classname

    def measured(self, case_name):
        """``{key: value}`` of the testsuite properties ``<case_name>.<key>`` (per-test measured values)."""
        start = f"{case_name}."
        return {name[len(start):]: value for name, value in self.property_list
                if name.startswith(start) and not name.startswith(PREFIX)}

    def counts(self):
        """Outcome counts computed from the cases (the attributes may disagree in a hand-edited file)."""
        result = dict.fromkeys(OUTCOMES, 0)
        for case in self.cases:
            result[case.outcome] += 1
        return result


def parse_junit(path):
    """junitparser's view of ``path``; raises JUnitReadError naming the file and the parse error."""
    try:
        return JUnitXml.fromfile(str(path))
    except OSError as err:
        raise JUnitReadError(path, f"cannot read: {err.strerror or err}") from err
    except SyntaxError as err:       # ElementTree's ParseError and lxml's XMLSyntaxError both are
        raise JUnitReadError(path, f"not well-formed XML: {err}") from err
    except JUnitXmlError as err:
        raise JUnitReadError(path, f"not JUnit: {err} (root must be <testsuites> or <testsuite>)") from err


def load_suites(path):
    """The top-level testsuites of the JUnit file ``path`` as ``Suite`` objects."""
    path = Path(path)
    return [suite_from_junitparser(suite, path) for suite in parse_junit(path)]


def suite_from_junitparser(suite, source):
    """A ``Suite`` from a junitparser ``TestSuite`` (direct testcases only)."""
    return Suite(
        name=suite.name or "",
        source=Path(source),
        tests=_int(suite._elem.get("tests")),
        failures=_int(suite._elem.get("failures")),
        errors=_int(suite._elem.get("errors")),
        skipped=_int(suite._elem.get("skipped")),
        time=_float(suite._elem.get("time")),
        timestamp=suite.timestamp or "",
        hostname=suite.hostname or "",
        property_list=[(p.name, p.value) for p in suite.properties()],
        cases=[_case(case) for case in suite.iterchildren(suite.testcase)],
    )


def _case(case):
    """A ``Case``: its kind from the result element and its type (``record.kind_of``), never its message."""
    tag, junit_type, message, detail = None, "", "", ""
    results = case.result
    for element, name in ((Failure, "failure"), (Error, "error"), (Skipped, "skipped")):
        hit = next((r for r in results if isinstance(r, element)), None)
        if hit is not None:
            tag, junit_type, message, detail = name, hit._elem.get("type") or "", hit.message or "", hit.text or ""
            break
    kind = record.kind_of(tag, junit_type)
    outcome = record.status_of(kind)
    return Case(classname=case.classname or "", name=case.name or "", time=_float(case._elem.get("time")),
                outcome=outcome, message=message, detail=detail, system_out=case.system_out or "",
                failure_type=junit_type if outcome in (FAILED, ERROR) else "", kind=kind)


def _int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0
