"""The EL probe's output (one JSON object per line) as typed facts.

``images/elprobe/elprobe.c`` prints a ``start`` record, a ``kvm`` record (or a
``fatal`` one when ``/dev/kvm`` cannot be opened), one ``result`` per probe and
VM type, a ``vm_child`` record per VM process and a closing ``summary``.  The
output reaches us through a console or adb, so it can carry other lines (kernel
messages printed on the same console, escape sequences): anything that is not a
record is kept in :attr:`ProbeRun.garbage` instead of failing the parse.  A run
with no ``summary`` was cut short; the parser says so rather than guessing.
No I/O here: tests feed it recorded and broken outputs.
"""

import json
from dataclasses import dataclass, field

PROBES = ("create", "guest_el", "host_read", "hypercalls", "teardown", "teardown_min")
VM_TYPES = ("normal", "protected")
RECORD_START = '{"record":'
NOT_SUPPORTED = -1      # SMCCC's NOT_SUPPORTED, as the signed x0 the probe reports


@dataclass(frozen=True)
class ProbeResult:
    """One probe on one VM type: its outcome (ok, refused, fault, ...) and what it measured."""

    probe: str
    vm: str
    outcome: str
    fields: dict

    def get(self, key, default=None):
        return self.fields.get(key, default)

    def describe(self):
        """A one-line account of the result, for assertion messages and reports."""
        f = self.fields
        if self.outcome == "refused":
            return f"refused: {f.get('errno_name', '?')} ({f.get('strerror', '')})".replace(" ()", "")
        if self.outcome == "fault":
            return f"fault: {f.get('signal', '?')} {f.get('si_code_name', '')}".strip()
        if self.outcome in ("not_run", "error", "timeout", "crashed", "guest_exception"):
            detail = f.get("reason") or f.get("detail") or f.get("step") or f.get("signal") or f.get("esr") or ""
            return f"{self.outcome}: {detail}".rstrip(": ")
        if self.probe == "guest_el":
            return f"guest at EL{f.get('current_el')}"
        if self.probe in ("host_read", "teardown"):
            return f"readable: {f.get('content', '?')} (first qword {f.get('first_qword', '?')})"
        if self.probe == "hypercalls":
            return f"{f.get('answered', '?')}/{f.get('total', '?')} calls answered"
        return self.outcome

    def call(self, name):
        """A hypercall's record (hypercalls probe), or None."""
        for call in self.fields.get("calls", ()):
            if call.get("name") == name:
                return call
        return None


@dataclass
class ProbeRun:
    """Everything one run of the probe printed, with the exit code its shell reported."""

    start: dict = None
    kvm: dict = None
    fatal: dict = None
    summary: dict = None
    results: dict = field(default_factory=dict)     # (probe, vm) -> ProbeResult
    vm_setup: dict = field(default_factory=dict)    # vm -> record
    children: dict = field(default_factory=dict)    # vm -> vm_child record
    garbage: list = field(default_factory=list)     # lines that were not records
    exit_code: int = None

    @property
    def complete(self):
        return bool(self.summary and self.summary.get("complete"))

    def result(self, probe, vm):
        return self.results.get((probe, vm))

    def problem(self):
        """Why this run cannot be judged at all (None when it can): no probe, crash, truncation."""
        if self.start is None:
            shown = "; ".join(self.garbage[-5:]) or "(no output)"
            return f"the probe printed no start record (exit code {self.exit_code}): {shown}"
        if self.fatal is not None:
            return None     # a measured fact (no /dev/kvm), judged by the suite
        if self.summary is None:
            return (f"the probe's output ends without a summary (exit code {self.exit_code}): "
                    f"{len(self.results)} results read, the run was cut short")
        if self.exit_code not in (None, 0):
            return f"the probe exited with code {self.exit_code}"
        return None

    def crashed_children(self):
        """VM processes that died of a signal or overran their time limit, as 'vm: how'."""
        out = []
        for vm, child in sorted(self.children.items()):
            if child.get("status") not in ("exited", None) or child.get("exit_code", 0) != 0:
                how = child.get("signal") or child.get("status") or f"exit {child.get('exit_code')}"
                out.append(f"{vm}: {how}")
        return out


def parse_probe_output(text, exit_code=None):
    """Parse the probe's stdout (console noise allowed) into a ProbeRun."""
    run = ProbeRun(exit_code=exit_code)
    for raw in text.splitlines():
        line = raw.strip().strip("\r")
        if not line:
            continue
        at = line.find(RECORD_START)
        record = _json_object(line[at:]) if at >= 0 else None
        if record is None:
            run.garbage.append(line)
            continue
        _add(run, record)
    return run


def _json_object(text):
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("record"), str) else None


def _add(run, record):
    kind = record["record"]
    if kind == "start":
        run.start = record
    elif kind == "kvm":
        run.kvm = record
    elif kind == "fatal":
        run.fatal = record
    elif kind == "summary":
        run.summary = record
    elif kind == "vm_setup":
        run.vm_setup[record.get("vm")] = record
    elif kind == "vm_child":
        run.children[record.get("vm")] = record
    elif kind == "result" and record.get("probe") in PROBES and record.get("vm") in VM_TYPES:
        fields = {k: v for k, v in record.items() if k not in ("record", "probe", "vm", "outcome")}
        run.results[(record["probe"], record["vm"])] = ProbeResult(
            record["probe"], record["vm"], str(record.get("outcome", "missing")), fields)
    else:
        run.garbage.append(json.dumps(record))
