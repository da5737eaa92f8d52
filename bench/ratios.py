"""Benchmark: the harness against its floors, three ratios in one command, and where the time goes.

1. boot suite: ``pkvmlab run --board B suites/boot`` against the same QEMU booting
   the same kernel and initramfs straight to poweroff (kernel argument
   ``pkvmlab.poweroff``, read by the initramfs's /init).
2. boot + pvm: ``pkvmlab run --board B`` against the same QEMU whose /init runs the
   EL probe as the pvm suite does (``elprobe --timeout 30``, output printed) and then
   powers off (``pkvmlab.probe_poweroff``).
3. the matrix: ``pkvmlab matrix`` over KERNELS x MODES with two jobs, against its
   floor: the raw boot + probe of every cell, two at a time.

Harness and floor alternate, REPEAT times each (the matrix MATRIX_REPEAT times),
and the medians are compared.  The breakdown of one harness run comes from the
run's own ``timeline.json`` (pkvmlab/timeline.py).  Not a test: nothing
here asserts a time; results go to reports/bench-ratios-<stamp>.json.

    python bench/ratios.py [--board qemu-virt] [--repeat 5] [--matrix-repeat 1]
                           [--kernels trixie-backports,bookworm] [--modes protected,nvhe,default]
"""

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from boot_ratio import harness, raw_command, time_raw  # noqa: E402

from pkvmlab.boards import load_board  # noqa: E402
from pkvmlab.images.emulator import resolve_emulator  # noqa: E402
from pkvmlab.images.manifest import load_image_set  # noqa: E402
from pkvmlab.images.provision import provision  # noqa: E402

GOALS = {"boot": 1.2, "boot+pvm": 1.1, "matrix": 1.2}
# timeline.json marks and what the span up to each one is.  `pkvmlab run` sets the run up and powers
# the board on before pytest starts (pkvmlab/earlyboot.py: marks cli, run_ready, boot_start, then
# configure); with pytest as the entry point the board powers on at session start
# (pkvmlab/plugin/fixtures.py power_on_early).  From boot_start on, everything overlaps the boot.
SPANS = (("cli", "interpreter, pkvmlab CLI"), ("configure", "interpreter, imports, pytest start-up"),
         ("qemu_prestart", "QEMU started early, paused (qemuprestart.py)"),
         ("run_ready", "provisioning check (pkvmlab run: labgrid imported meanwhile)"),
         ("boot_start", "labgrid environment, target"),
         ("collected", "collection (board booting)"), ("boot_wait", "session set-up (board booting)"),
         ("shell", "rest of the boot to the shell prompt"), ("facts", "boot facts"), ("sessionfinish", "suites"),
         ("report_written", "JUnit + HTML + history"), ("end", "records"))
LATE_CONFIGURE = "pytest start-up, plugins (board booting)"


def cell_board(board, mode):
    """The board with ``kvm-arm.mode=<mode>`` as ``pkvmlab run --kvm-mode`` sets it ('default': none)."""
    words = [w for w in board.kernel_args.split() if not w.startswith("kvm-arm.mode=")]
    if mode != "default":
        words.append(f"kvm-arm.mode={mode}")
    return dataclasses.replace(board, kernel_args=" ".join(words))


def breakdown(timeline_path, total):
    """[(what, seconds)] from a run's timeline.json, with the suites split per module."""
    data = json.loads(Path(timeline_path).read_text())
    marks = {m["name"]: m["time"] for m in data["marks"]}
    rows, last = [], marks.get("process_start")
    # In the order they happened (a board not powered on early has boot_start after collection).
    for name, what in sorted(SPANS, key=lambda span: marks.get(span[0], 0)):
        if name not in marks or last is None:
            continue
        if name == "sessionfinish":
            # A module's first setup includes the session's boot: its span starts once the facts are in.
            floor = marks.get("facts", 0)
            for module, span in sorted(data["suites"].items(), key=lambda kv: kv[1]["start"]):
                rows.append((f"  {module}", span["stop"] - max(span["start"], floor)))
        if name == "configure" and marks.get("boot_start", marks[name]) < marks[name]:
            what = LATE_CONFIGURE
        rows.append((what, marks[name] - last))
        last = marks[name]
    if last is not None and marks.get("process_start") is not None:
        rows.append(("process exit (measured outside)", total - (last - marks["process_start"])))
    return rows


def ratio_row(name, raw, harn):
    r, h = statistics.median(raw), statistics.median(harn)
    return {"name": name, "raw_seconds": [round(x, 3) for x in raw], "harness_seconds": [round(x, 3) for x in harn],
            "raw_median": round(r, 3), "harness_median": round(h, 3), "ratio": round(h / r, 3), "goal": GOALS[name]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu-virt")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--matrix-repeat", type=int, default=1)
    parser.add_argument("--kernels", default="trixie-backports,bookworm")
    parser.add_argument("--modes", default="protected,nvhe,default")
    args = parser.parse_args()
    board = load_board(args.board)
    image_set = load_image_set(board.image_set)
    provisioned = provision(image_set)
    emulator = resolve_emulator(None, board.emulator.qemu_min_version)
    kernels, modes = args.kernels.split(","), args.modes.split(",")
    results, last_run = [], None
    with tempfile.TemporaryDirectory() as reports, tempfile.TemporaryDirectory() as tftp:
        floors = {"boot": raw_command(board, provisioned, emulator, tftp),
                  "boot+pvm": raw_command(board, provisioned, emulator, tftp, extra=" pkvmlab.probe_poweroff")}
        runs = {"boot": ["run", "--board", board.name, str(ROOT / "suites" / "boot")],
                "boot+pvm": ["run", "--board", board.name]}
        for name in ("boot", "boot+pvm"):
            cmd, dialog = floors[name]
            time_raw(cmd, dialog)                       # warm the page cache for both sides
            raw, harn = [], []
            for n in range(args.repeat):
                raw.append(time_raw(cmd, dialog))
                last_run = f"{name.replace('+', '-')}-{n}"
                harn.append(harness(runs[name], reports, last_run))
            results.append(ratio_row(name, raw, harn))
        rows = breakdown(Path(reports) / last_run / "timeline.json", harn[-1])

        cells = []
        for kernel in kernels:
            cell_set = provision(image_set.with_kernel_suite(kernel))
            for mode in modes:
                cells.append(raw_command(cell_board(board, mode), cell_set, emulator, tftp,
                                         extra=" pkvmlab.probe_poweroff"))
        raw, harn = [], []
        for _ in range(args.matrix_repeat):
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda c: time_raw(*c), cells))
            raw.append(time.monotonic() - started)
            harn.append(harness(["matrix", "--board", board.name, "--kernels", args.kernels,
                                 "--modes", args.modes, "--jobs", "2"], reports, None))
        results.append(ratio_row("matrix", raw, harn))

    print(f"board {board.name}, kernel {provisioned.kernel_release}, {emulator.version_line}, -cpu "
          f"{board.emulator.cpu}; {args.repeat} pairs (matrix: {len(cells)} cells, {args.matrix_repeat} pairs)")
    for row in results:
        verdict = "at or under" if row["ratio"] <= row["goal"] else "ABOVE"
        print(f"{row['name']:9} floor {row['raw_median']:6.2f} s  harness {row['harness_median']:6.2f} s  "
              f"ratio {row['ratio']:.2f}x  ({verdict} the goal {row['goal']}x)")
    print(f"where one boot+pvm run's {results[1]['harness_seconds'][-1]:.2f} s go:")
    for what, seconds in rows:
        print(f"  {what:40} {seconds:6.2f} s")
    out = ROOT / "reports" / f"bench-ratios-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"board": board.name, "kernel": provisioned.kernel_release,
                               "emulator": emulator.version_line, "results": results,
                               "breakdown": [{"what": w.strip(), "seconds": round(s, 3)} for w, s in rows]},
                              indent=2) + "\n")
    print(f"written {out}")
    return 0 if all(r["ratio"] <= r["goal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
