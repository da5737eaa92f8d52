"""Soak: N runs of `pkvmlab run` in sequence, and what each one leaves behind.

Each run is the whole ``pkvmlab run --board B`` command (every suite unless
suites are given after ``--``), into one reports directory of its own.  While a
run goes, its process tree is read from /proc every 50 ms: every descendant
(QEMU, the power switch's QEMU, anything else) is remembered with its start
time, and the harness's own open fds and threads are sampled (after it exits
they cannot be read).  After each run it prints:

* leaked processes: descendants of the run still alive after the harness
  exited, with their open fds and threads (a pid is matched with its start time,
  so a reused pid is not counted), and ``qemu-system-*`` processes that appeared
  under PID 1 during the run, whoever started them;
* leftover temp dirs: ``$TMPDIR/labgrid-qemu-tmp-*`` and ``$TMPDIR/pkvmlab-*``
  that appeared during the run and are still there, split into the run's own
  (named on a descendant's command line, or carrying its owner file with the
  harness's pid) and others (a concurrent run on the same machine);
* growth in bytes of the reports directory and of ``history.sqlite``.

At the end: per test, pass / fail / skip counts over the runs, and "flaky" for a
test that both passed and failed.  A JSON copy goes to
``<reports>/soak.json``.  Not a test: nothing here asserts.

    python bench/soak.py [--runs 5] [--board qemu-virt] [--reports DIR] [-- pytest args / suites]
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMP_PATTERNS = ("labgrid-qemu-tmp-*", "pkvmlab-*")
OWNER_FILE = ".pkvmlab-owner"   # pkvmlab.childproc.OWNER_FILE


def read_proc(pid):
    """(ppid, start time) of ``pid``, or None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (int(fields[1]), fields[19])


def cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def processes():
    table = {}
    for entry in Path("/proc").glob("[0-9]*"):
        info = read_proc(int(entry.name))
        if info is not None:
            table[int(entry.name)] = info
    return table


def descendants(table, root):
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def fds_and_threads(pid):
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    try:
        threads = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Threads:"))
    except (OSError, StopIteration):
        threads = None
    return fds, threads


def temp_dirs():
    base = tempfile.gettempdir()
    return {path for pattern in TEMP_PATTERNS for path in glob.glob(os.path.join(base, pattern))}


def owner_pid(path):
    try:
        return int(Path(path, OWNER_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def size_of(path):
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def outcomes(junit):
    """{test id: pass|fail|skip} of one JUnit file; {} when the run wrote none."""
    if not junit.is_file():
        return {}
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        tags = {child.tag for child in case}
        kind = "fail" if tags & {"failure", "error"} else "skip" if "skipped" in tags else "pass"
        result[f"{case.get('classname')}::{case.get('name')}"] = kind
    return result


def one_run(index, board, reports, extra):
    run_id = f"soak-{index}"
    before_dirs = temp_dirs()
    before_qemus = {pid for pid in processes() if "qemu-system" in cmdline(pid)}
    reports_before, history_before = size_of(reports), size_of(reports / "history.sqlite")
    started = time.monotonic()
    with open(reports / f"{run_id}.out", "w") as out:
        harness = subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", "run", "--board", board, "--reports",
                                    str(reports), "--run-id", run_id, *extra], cwd=ROOT, stdout=out,
                                   stderr=subprocess.STDOUT)
    seen = {}                 # pid -> (start time, cmdline) of every descendant seen
    peak_fds = peak_threads = 0
    while harness.poll() is None:
        table = processes()
        for pid in descendants(table, harness.pid):
            if pid not in seen:
                seen[pid] = (table[pid][1], cmdline(pid))
        fds, threads = fds_and_threads(harness.pid)
        peak_fds, peak_threads = max(peak_fds, fds or 0), max(peak_threads, threads or 0)
        time.sleep(0.05)
    seconds = time.monotonic() - started
    time.sleep(0.5)           # let PR_SET_PDEATHSIG and init's reaping happen
    table = processes()
    leaked = []
    for pid, (start, cmd) in sorted(seen.items()):
        if pid in table and table[pid][1] == start:
            fds, threads = fds_and_threads(pid)
            leaked.append({"pid": pid, "ppid": table[pid][0], "fds": fds, "threads": threads, "cmd": cmd[:160]})
    orphan_qemus = [pid for pid, (ppid, _) in table.items()
                    if ppid == 1 and pid not in before_qemus and "qemu-system" in cmdline(pid)]
    new_dirs = sorted(temp_dirs() - before_dirs)
    named = " ".join(cmd for _, cmd in seen.values())
    ours = [d for d in new_dirs if d in named or owner_pid(d) == harness.pid]
    junit = reports / run_id / "junit.xml"
    return {"run": index, "exit": harness.returncode, "seconds": round(seconds, 1), "outcomes": outcomes(junit),
            "descendants": len(seen), "harness_peak_fds": peak_fds, "harness_peak_threads": peak_threads,
            "leaked": leaked, "new_qemus_under_pid1": orphan_qemus,
            "temp_dirs_left": ours, "temp_dirs_left_by_others": [d for d in new_dirs if d not in ours],
            "reports_growth": size_of(reports) - reports_before,
            "history_growth": size_of(reports / "history.sqlite") - history_before}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--board", default="qemu-virt")
    parser.add_argument("--reports", help="reports directory (default: reports/soak-<stamp>, made fresh)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    reports = Path(args.reports or ROOT / "reports" / f"soak-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    reports.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.runs} runs of pkvmlab run --board {args.board} {' '.join(extra)} into {reports}")
    results = []
    for index in range(1, args.runs + 1):
        r = one_run(index, args.board, reports, extra)
        results.append(r)
        counts = {k: sum(1 for v in r["outcomes"].values() if v == k) for k in ("pass", "fail", "skip")}
        print(f"run {index}: exit {r['exit']} in {r['seconds']} s; {counts['pass']} pass, {counts['fail']} fail, "
              f"{counts['skip']} skip; {r['descendants']} child processes, harness peak {r['harness_peak_fds']} "
              f"fds / {r['harness_peak_threads']} threads; leaked processes: {len(r['leaked'])}; new qemu-system "
              f"under PID 1: {len(r['new_qemus_under_pid1'])}; temp dirs left: {len(r['temp_dirs_left'])} (by others:"
              f" {len(r['temp_dirs_left_by_others'])}); reports +{r['reports_growth']} B, history.sqlite "
              f"+{r['history_growth']} B")
        for leak in r["leaked"]:
            print(f"    leaked pid {leak['pid']} (ppid {leak['ppid']}, {leak['fds']} fds, {leak['threads']} threads):"
                  f" {leak['cmd']}")
        for path in r["temp_dirs_left"]:
            print(f"    temp dir left: {path}")
    tests = sorted(set().union(*(r["outcomes"] for r in results)))
    print(f"\n{'test':70} pass fail skip  flaky")
    for test in tests:
        seen = [r["outcomes"].get(test, "absent") for r in results]
        n = {k: seen.count(k) for k in ("pass", "fail", "skip")}
        flaky = "FLAKY" if n["pass"] and n["fail"] else ""
        print(f"{test[-70:]:70} {n['pass']:4} {n['fail']:4} {n['skip']:4}  {flaky}")
    leaks = sum(len(r["leaked"]) for r in results)
    left = sum(len(r["temp_dirs_left"]) for r in results)
    flaky = sum(1 for t in tests if {"pass", "fail"} <= {r["outcomes"].get(t) for r in results})
    growth = [r["reports_growth"] for r in results]
    hist = [r["history_growth"] for r in results]
    print(f"\nsoak: {len(results)} runs, exits {[r['exit'] for r in results]}, {len(tests)} tests, {flaky} flaky; "
          f"leaked processes {leaks}; temp dirs left {left}; reports growth per run {growth} B "
          f"(mean {sum(growth) // max(1, len(growth))}); history.sqlite growth per run {hist} B")
    (reports / "soak.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
