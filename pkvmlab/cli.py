"""The ``pkvmlab`` command: a thin face over boards, images, runs and reports.

    pkvmlab boards                                  list boards and what they expect
    pkvmlab images fetch --board qemu-virt          provision (download/build/cache) an image set
    pkvmlab run --board qemu-virt [pytest args]     boot the board once, run the suites, write JUnit
    pkvmlab matrix [--kernels ...] [--modes ...] [--qemu ...] [--cpus ...]
                                                    boot + pvm suites over kernels x KVM modes x emulators x CPUs
    pkvmlab report merge|html|history ...           lab reports
"""

import argparse
import atexit
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .boards import known_boards, load_board, project_root
from .errors import ConfigError, PkvmlabError

EXIT_OK, EXIT_FAILED = 0, 1     # the other codes are the failure classes' (pkvmlab.outcome, README)


def _err(message):
    print(f"pkvmlab: error: {message}", file=sys.stderr)


def cmd_boards(args):
    for name in known_boards():
        try:
            board = load_board(name)
        except ConfigError as err:
            print(f"{name:16} INVALID: {err.problems[0]}")
            continue
        e = board.expect
        print(f"{board.name:16} {board.kind:8} boot {e.boot_el}, kvm {e.kvm_mode}, pVMs "
              f"{'yes' if e.pvm else 'no'}  -- {board.soc}")
    return EXIT_OK


def cmd_images_fetch(args):
    from .images.manifest import load_image_set
    from .images.provision import provision
    set_name = args.set
    if not set_name:
        board = load_board(args.board)
        if not board.image_set:
            raise ConfigError(board.path, [f"{board.path}: board {board.name} names no image_set"])
        set_name = board.image_set
    image_set = load_image_set(set_name)
    if args.kernel_suite:
        image_set = image_set.with_kernel_suite(args.kernel_suite)
    started = time.monotonic()
    result = provision(image_set, refresh=args.refresh)
    record = result.record
    print(f"image set {image_set.name}: {result.directory} ({time.monotonic() - started:.2f} s)")
    if "kernel" in record:
        k = record["kernel"]
        print(f"  kernel    {k['release']}  {k.get('package', k.get('path'))} {k.get('version', '')}  "
              f"sha256 {k['sha256'][:16]}")
    if "initramfs" in record:
        i = record["initramfs"]
        print(f"  initramfs {i['size']} bytes  busybox {i['busybox']['version']}  sha256 {i['sha256'][:16]}")
    if "elprobe" in record:
        print(f"  elprobe   sha256 {record['elprobe']['sha256'][:16]}  ({record['elprobe'].get('compiler')})")
    for key, spec in record.get("files", {}).items():
        print(f"  {key:9} {spec['path']}  sha256 {spec['sha256'][:16]}")
    return EXIT_OK


def pytest_args_for_run(board, args, extra):
    """The pytest command line `pkvmlab run` stands for."""
    root = project_root()
    # Suites named on the command line win; otherwise every suite (selection per board kind is the plugin's).
    has_paths = any(Path(a.split("::")[0]).exists() for a in extra if not a.startswith("-"))
    suites = [] if has_paths else [str(root / "suites")]
    argv = ["-p", "pkvmlab.plugin", "--rootdir", str(root), "-c", str(root / "pyproject.toml"),
            "--board", args.board]
    if args.env:
        argv += ["--lg-env", args.env]
    for flag, value in (("--kernel-suite", args.kernel_suite), ("--kvm-mode", args.kvm_mode),
                        ("--reports", args.reports), ("--run-id", args.run_id)):
        if value:
            argv += [flag, value]
    if args.refresh:
        argv.append("--refresh-images")
    return argv + extra + suites


def cmd_run(args, extra):
    import pytest

    from .hostdeps import ensure_qemu
    board = load_board(args.board)
    if board.kind == "qemu":
        ensure_qemu(auto_install=True, echo=lambda m: print(m, file=sys.stderr))
    return int(pytest.main(pytest_args_for_run(board, args, extra)))


def cmd_matrix(args):
    from .matrix import run_matrix
    return run_matrix(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="pkvmlab", description="Does protected KVM isolate on this board?")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("boards", help="list the boards and their expectations").set_defaults(func=cmd_boards)

    images = sub.add_parser("images", help="image sets").add_subparsers(dest="images_command", required=True)
    fetch = images.add_parser("fetch", help="provision an image set into the cache (offline once cached)")
    which = fetch.add_mutually_exclusive_group()
    which.add_argument("--board", default="qemu-virt", help="provision the image set of this board")
    which.add_argument("--set", help="provision this image set (images/<SET>.yaml)")
    fetch.add_argument("--kernel-suite", help="newest kernel of this Debian suite instead")
    fetch.add_argument("--refresh", action="store_true", help="resolve versions again (asks the mirror)")
    fetch.set_defaults(func=cmd_images_fetch)

    run = sub.add_parser("run", help="run the suites on a board (extra arguments go to pytest)")
    run.add_argument("--board", required=True, help=f"one of: {', '.join(known_boards())}")
    run.add_argument("--env", help="labgrid environment file instead of the board's")
    run.add_argument("--kernel-suite", help="boot the newest kernel of this Debian suite")
    run.add_argument("--kvm-mode", choices=("protected", "nvhe", "default", "none"))
    run.add_argument("--reports", help="reports directory (default: reports/)")
    run.add_argument("--run-id", help="name of the run directory")
    run.add_argument("--refresh", action="store_true", help="resolve image versions again")
    run.set_defaults(func=cmd_run, takes_extra=True)

    matrix = sub.add_parser("matrix", help="boot + pvm suites over Debian kernels x kvm-arm modes")
    matrix.add_argument("--board", default="qemu-virt")
    matrix.add_argument("--kernels", default="bookworm,trixie,trixie-backports,sid",
                        help="comma-separated Debian suites")
    matrix.add_argument("--modes", default="protected,nvhe,default", help="comma-separated kvm-arm.mode values")
    matrix.add_argument("--qemu", default="auto",
                        help="comma-separated emulators (auto, host, a Debian suite, a path): e.g. host,auto "
                             "compares the host's QEMU with the board's default")
    matrix.add_argument("--cpus", default="", help="comma-separated QEMU -cpu values (default: the board's)")
    matrix.add_argument("--jobs", type=int, default=2, help="boards booted at once (default 2)")
    matrix.add_argument("--reports", help="reports directory (default: reports/)")
    matrix.set_defaults(func=cmd_matrix)

    try:
        from .report.cli import add_parser as add_report_parser
    except ImportError:
        pass
    else:
        add_report_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "takes_extra", False):
            return args.func(args, extra)
        return args.func(args)
    except PkvmlabError as err:
        from .outcome import classify
        kind = classify(err).kind
        _err(f"{kind.name}: " + (str(err) if isinstance(err, ConfigError) else f"{type(err).__name__}: {err}"))
        return kind.exit_code
    except KeyboardInterrupt:
        from .outcome import INTERRUPTED
        _err("interrupted")
        return INTERRUPTED.exit_code


def entry():
    """The console script: ``main()``, then exit without tearing the interpreter down.

    A run leaves nothing for interpreter finalisation to do but free the objects
    of pytest, labgrid and the run one by one (measured: 0.15-0.2 s, about 5 % of a
    board run).  The atexit handlers still run (labgrid's targets stop whatever
    they still drive), logs and standard streams are flushed, then the process
    ends with the run's exit code.
    """
    try:
        code = main()
        sys.stdout.flush()
    except SystemExit as exc:    # argparse errors and --help; a message instead of a code means 1, as in Python
        code = exc.code or 0
        if not isinstance(code, int):
            print(code, file=sys.stderr)
            code = EXIT_FAILED
    except BrokenPipeError:      # `pkvmlab boards | head`: the reader left; end quietly, as SIGPIPE would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
