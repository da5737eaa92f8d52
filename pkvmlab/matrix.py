"""The kernel x KVM-mode matrix: boot every combination once, run boot + pvm suites, one report.

Each combination is a normal ``pkvmlab run`` (its own QEMU, its own run
directory) so a crash in one cell cannot spoil another; ``--jobs`` of them run
at once (TCG QEMU uses about one core per board).  Kernels are provisioned
first, one after another, so the parallel runs start from a warm cache.  The
runs' JUnit files are merged into one (a testsuite per combination) and a
table - rows kernels, columns modes - is written as Markdown and HTML.
"""

import html
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .boards import load_board, project_root
from .images.manifest import load_image_set
from .images.progress import note
from .images.provision import provision
from .report.junit import XFAIL_TYPE


def _cell_id(kernel_suite, mode):
    return f"{kernel_suite}-{mode}"


def _run_cell(board_name, kernel_suite, mode, reports, matrix_id):
    run_id = f"{matrix_id}/{_cell_id(kernel_suite, mode)}"
    root = project_root()
    cmd = [sys.executable, "-m", "pkvmlab.cli", "run", "--board", board_name, "--kernel-suite", kernel_suite,
           "--kvm-mode", mode, "--reports", str(reports), "--run-id", run_id,
           str(root / "suites" / "boot"), str(root / "suites" / "pvm"), "-q", "-p", "no:cacheprovider"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    run_dir = Path(reports) / run_id
    (run_dir / "pytest-output.txt").write_text(proc.stdout + proc.stderr)
    return {"kernel": kernel_suite, "mode": mode, "exit": proc.returncode, "run_dir": run_dir,
            "seconds": round(time.monotonic() - started, 1)}


def read_cell(run_dir):
    """Properties and outcome counts of one cell's JUnit file (None when the run wrote none)."""
    path = Path(run_dir) / "junit.xml"
    if not path.is_file():
        return None
    suite = ET.parse(path).getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    # Of the skipped, the board's known findings (xfails) are counted apart: they are findings, not gaps.
    counts["known"] = sum(1 for skipped in suite.iter("skipped") if skipped.get("type") == XFAIL_TYPE)
    return {"props": props, "counts": counts, "name": suite.get("name")}


def cell_summary(cell):
    if cell is None:
        return {"boot_el": "no report", "kvm": "", "create": "", "host_read": "", "teardown": "", "verdict": "error"}
    p, c = cell["props"], cell["counts"]
    bad = c["failures"] + c["errors"]
    return {
        "boot_el": p.get("pkvmlab.boot_el", "?"),
        "kvm": re.sub(r"^kvm \[\d+\]: | mode initialized successfully$", "",
                      p.get("pkvmlab.kvm_line") or p.get("pkvmlab.kvm_mode", "?")),
        "create": p.get("pkvmlab.pvm.create", "n/a"),
        "host_read": p.get("pkvmlab.pvm.host_read", "n/a"),
        "teardown": p.get("pkvmlab.pvm.teardown", "n/a"),
        "kernel": p.get("pkvmlab.kernel_release", "?"),
        "verdict": f"{c['tests'] - bad - c['skipped']} pass, " + (f"{c['known']} known, " if c["known"] else "")
                   + f"{c['skipped'] - c['known']} skip, {bad} fail",
    }


def matrix_markdown(kernels, modes, cells):
    header = "| kernel | " + " | ".join(f"kvm-arm.mode={m}" for m in modes) + " |"
    lines = [header, "|" + "---|" * (len(modes) + 1)]
    for kernel in kernels:
        row = []
        release = ""
        for mode in modes:
            s = cell_summary(cells.get((kernel, mode)))
            release = s.get("kernel", release)
            row.append(f"{s['boot_el']}, {s['kvm']}; pVM create: {s['create']}; host read of pVM page: "
                       f"{s['host_read']}; after teardown: {s['teardown']} ({s['verdict']})")
        lines.append(f"| {kernel} ({release}) | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def matrix_html(kernels, modes, cells, title):
    rows = []
    for kernel in kernels:
        tds = []
        release = ""
        for mode in modes:
            s = cell_summary(cells.get((kernel, mode)))
            release = s.get("kernel", release)
            state = "fail" if not s["verdict"].endswith(" 0 fail") else "pass"
            tds.append(f'<td class="{state}"><b>{html.escape(s["boot_el"])}</b><br>{html.escape(s["kvm"])}<br>'
                       f'pVM create: {html.escape(s["create"])}<br>host read: {html.escape(s["host_read"])}<br>'
                       f'after teardown: {html.escape(s["teardown"])}<br>'
                       f'<small>{html.escape(s["verdict"])}</small></td>')
        rows.append(f"<tr><th>{html.escape(kernel)}<br><small>{html.escape(release)}</small></th>{''.join(tds)}</tr>")
    head = "".join(f"<th>kvm-arm.mode={html.escape(m)}</th>" for m in modes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;padding:6px;"
            "vertical-align:top}.pass{background:#d8f5d0}.fail{background:#f8d0d0}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr><th>kernel</th>{head}</tr>{''.join(rows)}</table>"
            "</body></html>\n")


def run_matrix(args):
    board = load_board(args.board)
    kernels = [k for k in args.kernels.split(",") if k]
    modes = [m for m in args.modes.split(",") if m]
    reports = Path(args.reports or project_root() / "reports")
    matrix_id = f"matrix-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    matrix_dir = reports / matrix_id
    started = time.monotonic()
    image_set = load_image_set(board.image_set)
    for kernel in kernels:
        provision(image_set.with_kernel_suite(kernel))
    note(f"matrix: {len(kernels)} kernels x {len(modes)} modes, {args.jobs} at once, into {matrix_dir}")
    matrix_dir.mkdir(parents=True)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(_run_cell, board.name, k, m, reports, matrix_id) for k in kernels for m in modes]
        results = []
        for future in futures:
            result = future.result()
            note(f"matrix: {result['kernel']} x {result['mode']}: exit {result['exit']} in {result['seconds']} s")
            results.append(result)
    cells = {(r["kernel"], r["mode"]): read_cell(r["run_dir"]) for r in results}
    wall = time.monotonic() - started
    title = f"pkvmlab matrix on {board.name}: {len(results)} boots in {wall:.0f} s"
    (matrix_dir / "matrix.md").write_text(f"# {title}\n\n" + matrix_markdown(kernels, modes, cells))
    (matrix_dir / "matrix.html").write_text(matrix_html(kernels, modes, cells, title))
    inputs = [r["run_dir"] / "junit.xml" for r in results if (r["run_dir"] / "junit.xml").is_file()]
    from .report.merge import merge_junit
    merge_junit(inputs, matrix_dir / "junit.xml")
    from .report.publish import HISTORY_NAME, publish_run
    # The cells recorded themselves in the history: publish the page only.
    for line in publish_run(matrix_dir / "junit.xml", reports / HISTORY_NAME, record=False):
        note(line.removeprefix("pkvmlab: "))
    print((matrix_dir / "matrix.md").read_text())
    print(f"pkvmlab: matrix report {matrix_dir / 'junit.xml'}, table {matrix_dir / 'matrix.md'} ({wall:.0f} s)")
    return 0 if all(r["exit"] == 0 for r in results) and len(inputs) == len(results) else 1
