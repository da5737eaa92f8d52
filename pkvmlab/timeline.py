"""Where a run's time goes: wall-clock marks kept as ``<run dir>/timeline.json``.

The benchmark (``bench/ratios.py``) reads this file to break a run down
(interpreter and imports, provisioning check, collection, boot, each suite,
report writing) from the run's own clock rather than from guesses; a lab reads
it to see why one board's runs got slower.  Marks are ``time.time()`` seconds,
the process's own start is read from ``/proc/self/stat`` (field 22, in clock
ticks since boot, proc(5)) against ``/proc/uptime``, so the interpreter's
start-up is counted too (to 10 ms; ``btime`` in /proc/stat is whole seconds).
"""

import json
import os
import time


def process_start():
    """Wall-clock time this process started, or None where /proc does not say."""
    try:
        with open("/proc/self/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as file:
            uptime = float(file.read().split()[0])
        now = time.time()
        return now - (uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Timeline:
    """Named marks in order, plus per-suite (test module) spans from pytest's own report times."""

    def __init__(self):
        self.marks = [("process_start", process_start())]
        self.suites = {}

    def mark(self, name):
        self.marks.append((name, time.time()))

    def test_report(self, report):
        """Widen the span of the report's module (``suites/boot/test_boot.py``) to include this phase."""
        module = report.nodeid.split("::", 1)[0]
        start, stop = self.suites.get(module, (report.start, report.stop))
        self.suites[module] = (min(start, report.start), max(stop, report.stop))

    def write(self, path):
        data = {"marks": [{"name": n, "time": t} for n, t in self.marks if t is not None],
                "suites": {m: {"start": a, "stop": b} for m, (a, b) in self.suites.items()}}
        try:
            path.write_text(json.dumps(data, indent=1) + "\n")
        except OSError:
            pass       # a full disk is reported by the run's own records; timings are not evidence
