"""The kernel x KVM-mode (x emulator x CPU) matrix: boot every combination once, run boot + pvm suites, one report.

The emulator and the CPU model are dimensions because they are part of what is
tested: a check that fails under one QEMU version and passes under another, on
the same kernel, mode and CPU, is the emulator's doing, and the table says so
("emulator artifact", with both outcomes) instead of blaming the board.

Each combination is a normal ``pkvmlab run`` (its own QEMU, its own run
directory) so a crash in one cell cannot spoil another; ``--jobs`` of them run
at once (TCG QEMU uses about one core per board).  Kernels are provisioned
first, one after another, so the parallel runs start from a warm cache.  The
runs' JUnit files are merged into one (a testsuite per combination), and that file is all the
tables are made from: ``report.table`` reads it into the report's model (outcome kinds from the
result elements' types, ``report.record``; nothing parsed back out of messages), the Markdown
table (``matrix.md``, rows kernels × emulators × CPUs, columns modes) and the HTML page
(``report.html``, and the same page as ``matrix.html``) are its renderings.  A check whose outcome
changes with the emulator alone is marked an emulator artifact there (``table.emulator_artifacts``).
"""

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .boards import load_board, project_root
from .images.manifest import load_image_set
from .images.progress import note
from .images.provision import provision


def split_cpus(text):
    """'max,pauth-impdef=on,cortex-a72' -> ['max,pauth-impdef=on', 'cortex-a72']: a piece with '=' is a
    property of the CPU model before it (QEMU's own -cpu syntax), not a model of its own."""
    cpus = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and cpus:
            cpus[-1] += "," + piece
        else:
            cpus.append(piece)
    return cpus


def _cell_id(kernel_suite, mode, qemu="auto", cpu=""):
    cell = f"{kernel_suite}-{mode}"
    if qemu != "auto":
        cell += "-qemu-" + re.sub(r"[^A-Za-z0-9.+-]", "_", qemu)
    if cpu:
        cell += "-" + re.sub(r"[^A-Za-z0-9.+-]", "_", cpu.split(",")[0])
    return cell


def _run_cell(board_name, kernel_suite, mode, reports, matrix_id, qemu="auto", cpu="", extra=(), started_cell=None):
    """Run one cell as ``pkvmlab run``; ``started_cell(process)`` is told its process once it runs.

    The cell is forked from the matrix's warm server (``pkvmlab/cellserver.py``: 0.9 s
    less CPU per cell); its output is ``<run dir>/pytest-output.txt``.
    """
    from .cellserver import start_cell
    run_id = f"{matrix_id}/{_cell_id(kernel_suite, mode, qemu, cpu)}"
    root = project_root()
    argv = ["run", "--board", board_name, "--kernel-suite", kernel_suite, "--kvm-mode", mode,
            "--reports", str(reports), "--run-id", run_id,
            *(["--qemu", qemu] if qemu != "auto" else []), *(["--cpu", cpu] if cpu else []), *extra,
            str(root / "suites" / "boot"), str(root / "suites" / "pvm"), "-q", "-p", "no:cacheprovider"]
    run_dir = Path(reports) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)     # the output's home, also for a cell stopped before it began
    started = time.monotonic()
    # SIGTERM when the matrix ends (keep_alive closes), so that the cell still writes its JUnit file and
    # stops its QEMU (which has its own death signal, SIGKILL, should the cell itself be killed).
    process, keep_alive = start_cell(argv, run_dir / "pytest-output.txt", root)
    try:
        if started_cell is not None:
            started_cell(process)
        process.join()
    finally:
        keep_alive.close()
    return {"kernel": kernel_suite, "mode": mode, "qemu": qemu, "cpu": cpu, "exit": process.exitcode,
            "run_dir": run_dir, "seconds": round(time.monotonic() - started, 1)}


def run_matrix(args):
    places = _matrix_places(args)      # --reserve: the free places to spread the cells over (docs/lab.md)
    board = load_board(args.board)
    kernels = [k for k in args.kernels.split(",") if k]
    modes = [m for m in args.modes.split(",") if m]
    qemus = [q for q in getattr(args, "qemu", "auto").split(",") if q] or ["auto"]
    cpus = split_cpus(getattr(args, "cpus", "")) or [""]
    reports = Path(args.reports or project_root() / "reports")
    matrix_id = f"matrix-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    matrix_dir = reports / matrix_id
    started = time.monotonic()
    from .cellserver import start_server
    start_server()       # the cells' warm server gets ready while the kernels are provisioned
    image_set = load_image_set(board.image_set)
    for kernel in kernels:
        provision(image_set.with_kernel_suite(kernel))
    if board.emulator is not None:   # fetched once here, so parallel cells never unpack it at the same time
        from .images.emulator import resolve_emulator
        for qemu in qemus:
            resolve_emulator(qemu, board.emulator.qemu_min_version)
    note(f"matrix: {len(kernels)} kernels x {len(modes)} modes x {len(qemus)} emulators x {len(cpus)} CPUs, "
         f"{args.jobs} at once, into {matrix_dir}")
    matrix_dir.mkdir(parents=True)
    health = None
    combos = [(k, m, q, c) for k in kernels for m in modes for q in qemus for c in cpus]
    from .report.warmup import prepare_report
    prepare_report()        # the merge and its page need them once the cells are done; meanwhile we wait
    if places:
        note(f"matrix: {len(places[1])} places ({', '.join(places[1])}) on {places[0]}; no separate health check: "
             "a cell failing for the lab is retried once on another place")
        results = _run_cells_on_places(str(board.path), combos, reports, matrix_id, matrix_dir, *places)
    else:
        results, health = _run_cells(board, combos, reports, matrix_id, max(1, args.jobs),
                                     health_check=getattr(args, "health_check", True))
    wall = time.monotonic() - started
    title = f"pkvmlab matrix on {board.name}: {len(results)} boots in {wall:.0f} s"
    banner = ""
    if health is not None:
        banner = (f"**{board.name} failed its health check**: it did not boot in {health['cell']} (exit "
                  f"{health['exit']}): {health['message']}. {health['not_run']} other cells not run.")
    inputs = [r["run_dir"] / "junit.xml" for r in results if (r["run_dir"] / "junit.xml").is_file()]
    if health is not None and health["run_dir"] / "junit.xml" in inputs:
        inputs.remove(health["run_dir"] / "junit.xml")
        inputs.insert(0, health["run_dir"] / "junit.xml")    # the failed boot is the report's first cause

    from .report.merge import merge_junit
    merged = merge_junit(inputs, matrix_dir / "junit.xml")
    from .report.publish import HISTORY_NAME, publish_run
    # The cells recorded themselves in the history: publish the page only.
    for line in publish_run(matrix_dir / "junit.xml", reports / HISTORY_NAME, record=False):
        note(line.removeprefix("pkvmlab: "))
    if (matrix_dir / "report.html").is_file():      # matrix.html: where earlier matrices had their table
        shutil.copyfile(matrix_dir / "report.html", matrix_dir / "matrix.html")
    from .report.markdown import render_markdown
    if merged.written:
        text = render_markdown(matrix_dir / "junit.xml", title, banner)
    else:
        text = f"# {title}\n\n{banner}\n\nno cell wrote a JUnit file\n"
    (matrix_dir / "matrix.md").write_text(text)
    print((matrix_dir / "matrix.md").read_text())
    print(f"pkvmlab: matrix report {matrix_dir / 'junit.xml'}, table {matrix_dir / 'matrix.md'} ({wall:.0f} s)")
    from .outcome import run_exit_code
    if health is not None:
        return health["exit"]
    return run_exit_code([r["exit"] if (r["run_dir"] / "junit.xml").is_file() else None for r in results])


def _run_cells(board, combos, reports, matrix_id, jobs, health_check=True):
    """Every cell, ``jobs`` at a time; returns (results, the cell whose board failed to boot, or None).

    Every cell's boot is the board's health check (LAVA boots a device once before it runs
    jobs, so that a broken device fails once instead of in every job).  Here no boot of its
    own is spent on it: the first cell whose board does not reach its shell for the lab's
    reasons (exit 10 or 11 before the boot ended: QEMU that cannot start, a power switch or
    console that does not answer) stops the matrix.  The cells then running are stopped
    (SIGTERM: each still ends its own run cleanly), none starts after it, and every cell that
    did not finish before it is written skipped with that boot's first cause; a broken board
    spends at most ``jobs`` boots.  A kernel that panics or hangs is a finding of its own cell,
    not the board's health.  ``health_check=False`` (``--no-health-check``) runs every cell regardless.
    """
    stop = threading.Event()
    running, lock, failed = set(), threading.Lock(), []

    def started_cell(proc):
        with lock:
            running.add(proc)
            if stop.is_set():
                proc.terminate()

    def cell(combo):
        if stop.is_set():
            return None
        kernel, mode, qemu, cpu = combo
        result = _run_cell(str(board.path), kernel, mode, reports, matrix_id, qemu, cpu, started_cell=started_cell)
        with lock:
            if stop.is_set():
                return None           # stopped, or ended after the board failed: not run
            if health_check and _board_failed_to_boot(result):
                failed.append(result)
                stop.set()
                for proc in running:
                    proc.terminate()
        note(f"matrix: {_cell_id(kernel, mode, qemu, cpu)}: exit {result['exit']} in {result['seconds']} s")
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(cell, combos))
    if not failed:
        return results, None
    from .healthcheck import first_problem
    health = dict(failed[0], message=first_problem(failed[0]["run_dir"] / "junit.xml") or f"exit {failed[0]['exit']}",
                  cell=_cell_id(failed[0]["kernel"], failed[0]["mode"], failed[0]["qemu"], failed[0]["cpu"]),
                  not_run=sum(result is None for result in results))
    note(f"matrix: {board.name} did not boot in {health['cell']} for the lab's reasons (exit {health['exit']}): "
         f"{health['message']}; the other cells are not run")
    return [result if result is not None else _skipped_cell(board.name, reports, matrix_id, combo, health)
            for combo, result in zip(combos, results, strict=True)], health


def _board_failed_to_boot(result):
    """Whether a cell ended (configuration or infrastructure, exit 10/11) before its board reached the shell."""
    from .outcome import CONFIGURATION, INFRASTRUCTURE
    if result["exit"] not in (CONFIGURATION.exit_code, INFRASTRUCTURE.exit_code):
        return False
    try:
        attempts = json.loads((result["run_dir"] / "boot_attempts.json").read_text())
    except (OSError, ValueError):
        return True       # ended before any boot was recorded
    return not attempts or attempts[-1].get("class") is not None


def _matrix_places(args):
    """(coordinator, [free place]) for ``--reserve``, with ``args.board`` set to the places' board; else None."""
    if not getattr(args, "reserve", None):
        return None
    from .errors import ConfigError
    from .lab.place import coordinator_address, parse_filters
    from .lab.placepool import free_places
    if getattr(args, "qemu", "auto") != "auto" or getattr(args, "cpus", ""):
        raise ConfigError("--reserve", ["--qemu/--cpus choose a local emulator; a place's QEMU is its exporter's"])
    address = coordinator_address(getattr(args, "coordinator", None))
    args.board, names = free_places(address, parse_filters(args.reserve))
    return address, names


def _run_cells_on_places(board_path, combos, reports, matrix_id, matrix_dir, address, places):
    """Every cell as ``pkvmlab run --place P``, one per place at a time; an infrastructure failure is retried
    once on another place, the first attempt kept as ``<cell>.attempt1`` and both in ``attempts.json``."""
    import json

    from .lab.placepool import run_on_places

    def run(combo, place, attempt):
        kernel, mode, qemu, cpu = combo
        cell_dir = Path(reports) / matrix_id / _cell_id(kernel, mode, qemu, cpu)
        if attempt > 1 and cell_dir.exists():
            cell_dir.rename(cell_dir.with_name(f"{cell_dir.name}.attempt{attempt - 1}"))
        cell_dir.mkdir(parents=True, exist_ok=True)    # a run that fails before it starts (place held) makes none
        result = _run_cell(board_path, kernel, mode, reports, matrix_id, qemu, cpu,
                           extra=("--place", place, "--coordinator", address))
        result["reported"] = (result["run_dir"] / "junit.xml").is_file()
        result["place"] = place
        return result

    def told(combo, place, result, retrying):
        note(f"matrix: {_cell_id(*combo)} on {place}: exit {result['exit']} in {result['seconds']} s"
             + ("; failed for the lab: retrying on another place" if retrying else ""))

    done = run_on_places(combos, places, run, on_attempt=told)
    (matrix_dir / "attempts.json").write_text(json.dumps(
        {_cell_id(*combo): attempts for combo, (_, attempts) in done.items()}, indent=2) + "\n")
    return [result for result, _ in done.values()]


def _skipped_cell(board_name, reports, matrix_id, combo, health):
    """A cell not run because the board failed its health check: a JUnit file that says so."""
    from .healthcheck import write_skipped_cell
    kernel, mode, qemu, cpu = combo
    run_dir = Path(reports) / matrix_id / _cell_id(kernel, mode, qemu, cpu)
    write_skipped_cell(run_dir / "junit.xml", f"{board_name}/{kernel}/{mode}", board_name, health["message"])
    return {"kernel": kernel, "mode": mode, "qemu": qemu, "cpu": cpu, "exit": 0, "run_dir": run_dir, "seconds": 0}
