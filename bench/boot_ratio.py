"""Benchmark: the harness's `pkvmlab run` of the boot suite against the raw QEMU floor, in one run.

Raw floor: the very QEMU command line the board's labgrid driver builds, same
kernel and initramfs, booting straight to poweroff (kernel argument
``pkvmlab.poweroff`` makes /init power off as soon as userspace is up).  On the
firmware boards (qemu-uboot, qemu-uefi) the floor is the power switch's own QEMU
command with the console on stdio: the same firmware, the same TFTP directory
holding the same kernel and initramfs, and on U-Boot the env's own boot commands
typed at its prompt the moment it shows (a bare expect loop, no labgrid).
Harness: the whole ``pkvmlab run --board B suites/boot`` command (Python start,
provisioning from a warm cache, boot to a shell, the suite, JUnit written).
Both are run alternately REPEAT times and the medians compared; the ratio is
printed and written to reports/bench-<stamp>.json.  Not a test: nothing here
asserts a time.

    python bench/boot_ratio.py [--board qemu-virt|qemu-uboot|qemu-uefi] [--repeat 5]
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

from pkvmlab.boards import load_board  # noqa: E402
from pkvmlab.images.emulator import resolve_emulator  # noqa: E402
from pkvmlab.images.manifest import load_image_set  # noqa: E402
from pkvmlab.images.provision import provision  # noqa: E402


def raw_command(board, provisioned, emulator, tftp_dir, extra=" pkvmlab.poweroff"):
    """The board driver's own QEMU command line (same emulator and CPU as the harness's runs), with the
    console on stdio and poweroff at userspace; and the firmware dialog ((wait for, then send) pairs)."""
    import labgrid

    import pkvmlab.lab  # noqa: F401  (registers our driver)
    os.environ["LG_PKVMLAB_IMAGES"] = str(provisioned.directory)
    os.environ["LG_PKVMLAB_KERNEL_ARGS"] = board.kernel_args + extra
    os.environ["LG_PKVMLAB_QEMU"] = str(emulator.binary)
    os.environ["LG_PKVMLAB_CPU"] = board.emulator.cpu
    os.environ["LG_PKVMLAB_TFTP_DIR"] = tftp_dir
    target = labgrid.Environment(str(board.env)).get_target()
    if board.power == "emulator":
        return target.get_driver("PkvmQEMUDriver", activate=False).get_qemu_base_args(), []
    switch = target.get_driver("QEMUPowerSwitchDriver", activate=False)
    cmd = switch.command()
    at = cmd.index("-serial")
    cmd[at + 1] = "stdio"
    strategy = target.get_driver("FirmwareShellStrategy", activate=False)
    for key in strategy.stage:                   # what TFTPProviderDriver stages: a link to the image
        image = target.env.config.get_image_path(key)
        link = os.path.join(tftp_dir, os.path.basename(image))
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(image, link)
    dialog = []
    if board.firmware == "u-boot":
        uboot = target.get_driver("UBootDriver", activate=False)
        dialog.append((uboot.autoboot.encode(), uboot.interrupt.encode()))
        dialog += [(uboot.prompt.encode(), command.encode() + b"\n") for command in strategy.boot_commands]
    return cmd, dialog


def time_raw(cmd, dialog=()):
    """Seconds from starting QEMU to the kernel's power-down, answering the firmware's ``dialog``."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, step = b"", 0
    try:
        while True:
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            seen += data
            while step < len(dialog) and dialog[step][0] in seen:
                seen = seen.split(dialog[step][0], 1)[1]
                proc.stdin.write(dialog[step][1])
                proc.stdin.flush()
                step += 1
            if b"reboot: Power down" in seen:
                break
            seen = seen[-4096:]
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    if b"reboot: Power down" not in seen:
        raise RuntimeError(f"raw boot did not reach poweroff (dialog step {step} of {len(dialog)}): {seen[-500:]!r}")
    return elapsed


def harness(args, reports, run_id=None):
    """Seconds one ``pkvmlab <args>`` command takes, start to exit (it must pass)."""
    cmd = [sys.executable, "-m", "pkvmlab.cli", *args, "--reports", reports]
    if args[0] == "run":
        cmd += [*(["--run-id", run_id] if run_id else []), "-q", "-p", "no:cacheprovider"]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    return elapsed


def time_harness(board_name, reports):
    return harness(["run", "--board", board_name, str(ROOT / "suites" / "boot")], reports)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="qemu-virt")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    board = load_board(args.board)
    provisioned = provision(load_image_set(board.image_set))
    emulator = resolve_emulator(None, board.emulator.qemu_min_version)
    raw, harness = [], []
    with tempfile.TemporaryDirectory() as reports, tempfile.TemporaryDirectory() as tftp_dir:
        cmd, dialog = raw_command(board, provisioned, emulator, tftp_dir)
        time_raw(cmd, dialog)              # warm the page cache for both sides
        for _ in range(args.repeat):
            raw.append(time_raw(cmd, dialog))
            harness.append(time_harness(args.board, reports))
    result = {
        "board": board.name, "kernel": provisioned.kernel_release, "repeat": args.repeat,
        "emulator": emulator.version_line, "emulator_source": emulator.source, "cpu": board.emulator.cpu,
        "raw_seconds": [round(x, 3) for x in raw], "harness_seconds": [round(x, 3) for x in harness],
        "raw_median": round(statistics.median(raw), 3), "harness_median": round(statistics.median(harness), 3),
    }
    result["ratio"] = round(result["harness_median"] / result["raw_median"], 3)
    print(f"board {board.name}, kernel {provisioned.kernel_release}, {emulator.version_line} "
          f"({emulator.source}), -cpu {board.emulator.cpu}, {args.repeat} runs each")
    print(f"raw QEMU to poweroff   median {result['raw_median']:.2f} s  {result['raw_seconds']}")
    print(f"pkvmlab run boot suite median {result['harness_median']:.2f} s  {result['harness_seconds']}")
    print(f"ratio harness/raw: {result['ratio']:.2f}x  (plain labgrid+pytest 1.85x, LAVA 2.2x, tuxrun 3.1x)")
    out = ROOT / "reports" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
