"""Benchmark: what a place on labgrid's coordinator costs, against the same board run locally, in one run.

Starts a one-machine lab (``pkvmlab lab up`` on a free 127.0.0.1 port), then:

* **one boot-suite run**: ``pkvmlab run --board B suites/boot`` (local: the power switch in the run)
  against ``pkvmlab run --place P suites/boot`` (the place's power switch on the exporter side,
  console and power through the place's resources, acquire and release), alternately REPEAT times;
* **the matrix** (``--kernels K --modes M``, no health check): locally with ``--jobs 2`` against
  ``--reserve board=B`` over the lab's two places, alternately MATRIX_REPEAT times.

Prints the medians and ratios and writes them to reports/bench-lab-<stamp>.json; stops the lab.
Not a test: nothing here asserts a time.

    python bench/lab_overhead.py [--board qemu-uboot] [--repeat 5] [--matrix-repeat 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pkvmlab.lab import labservice  # noqa: E402


def timed(cmd, env):
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        print(f"  (exit {proc.returncode}: {' | '.join(tail)})", file=sys.stderr)
    return seconds, proc.returncode


def boot_seconds(run_dir):
    """``pkvmlab.boot_seconds`` of a run (power-on to shell prompt), or None."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.parse(run_dir / "junit.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    value = next((p.get("value") for p in root.iter("property") if p.get("name") == "pkvmlab.boot_seconds"), None)
    return float(value) if value else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu-uboot")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--matrix-repeat", type=int, default=2)
    parser.add_argument("--kernels", default="trixie-backports")
    parser.add_argument("--modes", default="protected,nvhe")
    args = parser.parse_args()
    pkvmlab = [sys.executable, "-m", "pkvmlab.cli"]
    work = Path(tempfile.mkdtemp(prefix="pkvmlab-bench-lab-"))
    state = labservice.up(lab_dir=work / "lab", coordinator="127.0.0.1:0")
    env = dict(os.environ, LG_COORDINATOR=state["coordinator"])
    place = state["places"][0]
    times = {"local": [], "place": [], "matrix_local": [], "matrix_places": []}
    codes = {key: [] for key in times}
    try:
        for n in range(args.repeat):
            for key, where in (("local", ["--board", args.board]), ("place", ["--place", place])):
                seconds, code = timed(pkvmlab + ["run", *where, "--reports", str(work / "runs"), "--run-id",
                                                 f"{key}-{n}", "suites/boot", "-q"], env)
                times[key].append(round(seconds, 2))
                codes[key].append(code)
                print(f"run {n + 1}/{args.repeat} {key:6} {seconds:6.2f} s (exit {code})", flush=True)
        cells = ["--kernels", args.kernels, "--modes", args.modes, "--no-health-check", "--reports", str(work / "mx")]
        for n in range(args.matrix_repeat):
            for key, how in (("matrix_local", ["--board", args.board, "--jobs", "2"]),
                             ("matrix_places", ["--reserve", f"board={args.board}"])):
                seconds, code = timed(pkvmlab + ["matrix", *how, *cells], env)
                times[key].append(round(seconds, 2))
                codes[key].append(code)
                print(f"matrix {n + 1}/{args.matrix_repeat} {key:13} {seconds:6.2f} s (exit {code})", flush=True)
    finally:
        print(labservice.down(work / "lab"), file=sys.stderr)
    medians = {key: statistics.median(values) for key, values in times.items() if values}
    boots = {key: [boot_seconds(work / "runs" / f"{key}-{n}") for n in range(args.repeat)]
             for key in ("local", "place") if args.repeat}
    boot_medians = {key: statistics.median([b for b in values if b is not None] or [0])
                    for key, values in boots.items()}
    result = {"board": args.board, "place": place, "repeat": args.repeat, "matrix_repeat": args.matrix_repeat,
              "kernels": args.kernels, "modes": args.modes, "times": times, "exit_codes": codes, "medians": medians,
              "boot_seconds": boots, "boot_medians": boot_medians,
              "place_overhead_seconds": round(medians["place"] - medians["local"], 2) if args.repeat else None,
              "place_ratio": round(medians["place"] / medians["local"], 3) if args.repeat else None,
              "matrix_ratio": round(medians["matrix_places"] / medians["matrix_local"], 3)
              if "matrix_places" in medians else None}
    out = ROOT / "reports" / f"bench-lab-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("medians", "boot_medians", "place_overhead_seconds", "place_ratio",
                                              "matrix_ratio")}))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
