"""The ``pkvmlab`` command: a thin face over boards, images, runs and reports.

    pkvmlab boards                                  list boards and what they expect
    pkvmlab images fetch --board qemu-virt          provision (download/build/cache) an image set
    pkvmlab images lock [--update] --board qemu-virt  pin the exact Debian packages it provisions
    pkvmlab run --board qemu-virt [pytest args]     boot the board once, run the suites, write JUnit
    pkvmlab matrix [--kernels ...] [--modes ...] [--qemu ...] [--cpus ...]
                                                    boot + pvm suites over kernels x KVM modes x emulators x CPUs
    pkvmlab report merge|html|history ...           lab reports
"""

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import interrupt
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
        wiring = f"{board.firmware}/{board.delivery}"
        print(f"{board.name:16} {wiring:14} boot {e.boot_el}, kvm {e.kvm_mode}, pVMs "
              f"{'yes' if e.pvm else 'no'}  -- {board.soc}")
    return EXIT_OK


def cmd_images_fetch(args):
    from .images.provision import provision
    _, image_set = _set_of(args)
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
    verified = record.get("verified", {})
    print(f"  verified  {len(verified)} files, {sum(v['size'] for v in verified.values()) / 1e6:.1f} MB hashed in "
          f"{record.get('verify_seconds', 0) * 1000:.0f} ms" + (f"; made again: {len(record['refetched'])}"
                                                                if record.get("refetched") else "")
          + (f"; pinned by {record['lock']}" if record.get("lock") else ""))
    return EXIT_OK


def _set_of(args):
    """(board or None, ImageSet) named by --board/--set."""
    from .images.manifest import load_image_set
    board = None
    set_name = args.set
    if not set_name:
        board = load_board(args.board)
        if not board.image_set:
            raise ConfigError(board.path, [f"{board.path}: board {board.name} names no image_set"])
        set_name = board.image_set
    return board, load_image_set(set_name)


def cmd_images_lock(args):
    """Write images/<set>.lock.json (and images/emulator.lock.json): the exact Debian packages provisioned.

    Without --update: pins what the cache resolved already (what runs boot now; offline when
    warm) and keeps pins that exist.  With --update: re-resolves every pin to the newest.
    """
    from .images.lock import emulator_lock_path, lock_path, pin_from_record, read_lock, write_lock
    from .images.provision import provision
    board, image_set = _set_of(args)
    path = lock_path(image_set)
    old = None if args.update else read_lock(path)
    previous = read_lock(path) if args.update else old
    data = {"image_set": image_set.name, "manifest": image_set.path.name,
            "kernel": dict(old.data.get("kernel", {})) if old else {},
            "busybox": dict(old.data.get("busybox", {})) if old else {}}
    suites = [s for s in (args.kernel_suite or "").split(",") if s]
    if previous:
        suites += [key.split("/", 1)[1] for key in previous.data.get("kernel", {})]
    variants = [image_set] + [image_set.with_kernel_suite(s) for s in dict.fromkeys(suites)
                              if image_set.kernel and image_set.kernel.debian and s != image_set.kernel.debian.suite]
    for variant in variants:
        deb = variant.kernel.debian if variant.kernel else None
        kernel_key = f"{deb.package}/{deb.suite}" if deb else None
        busybox_key = f"{variant.busybox.package}/{variant.busybox.suite}" if variant.busybox else None
        if not (kernel_key or busybox_key):
            continue
        if (kernel_key and kernel_key not in data["kernel"]) or (busybox_key and busybox_key not in data["busybox"]):
            record = provision(variant, refresh="versions" if args.update else False, lock=None).record
            if kernel_key and kernel_key not in data["kernel"]:
                data["kernel"][kernel_key] = pin_from_record(record["kernel"])
            if busybox_key and busybox_key not in data["busybox"]:
                data["busybox"][busybox_key] = pin_from_record(record["initramfs"]["busybox"])
    if not (data["kernel"] or data["busybox"]):
        print(f"image set {image_set.name}: nothing is provisioned from Debian; no lock file written")
    else:
        lock = write_lock(path, data)
        provision(image_set, lock=lock)          # the lock is usable as written (offline: just fetched)
        print(f"{path}:")
        for section in ("kernel", "busybox"):
            for key, pin in sorted(data[section].items()):
                print(f"  {section:8} {key:34} {pin['package']} {pin['version']}  deb sha256 {pin['deb_sha256'][:16]}")
    if board is not None and board.emulator is not None:
        _lock_emulator(args, board, emulator_lock_path())
    return EXIT_OK


def _lock_emulator(args, board, path):
    from .images.emulator import DEBIAN_PACKAGES, resolve_emulator
    from .images.lock import read_lock, write_lock
    emulator = resolve_emulator(args.qemu, board.emulator.qemu_min_version, refresh=args.update, lock=None)
    if not emulator.fetched:
        print(f"emulator: {emulator.label} ({emulator.source}, {emulator.binary}) is not fetched from Debian: "
              "nothing to pin")
        return
    record = emulator.fetched
    key = f"{DEBIAN_PACKAGES[0]}/{record['suite']}/{record['arch']}"
    old = read_lock(path)
    entries = dict(old.data.get("emulator", {})) if old else {}
    if key in entries and not args.update:
        print(f"{path}: emulator {key} already pinned to {entries[key]['version']} (--update to re-resolve)")
        return
    entries[key] = {"version": record["version"], "suite": record["suite"], "arch": record["arch"],
                    "packages": {name: {"package": name, **deb} for name, deb in sorted(record["packages"].items())}}
    write_lock(path, {"emulator": entries})
    print(f"{path}:\n  emulator {key:34} {record['version']}")


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
                        ("--qemu", getattr(args, "qemu", None)), ("--cpu", getattr(args, "cpu", None)),
                        ("--reports", args.reports), ("--run-id", args.run_id)):
        if value:
            argv += [flag, value]
    if args.refresh:
        argv.append("--refresh-images")
    return argv + extra + suites


def cmd_run(args, extra):
    from .earlyboot import EarlyBoard, wanted
    from .hostdeps import ensure_qemu
    if args.place or args.reserve is not None:
        import pytest

        # On a place of labgrid's coordinator: acquired first, released however the run ends (docs/lab.md).
        from .lab.placerun import held_place, split_reserve
        filters, extra = split_reserve(args.reserve, extra)
        if args.reserve is not None and not filters:
            raise ConfigError("--reserve", ["--reserve: give key=value tags (e.g. board=qemu-uboot)"])
        with held_place(args, filters, say=lambda m: print(m, file=sys.stderr)) as (_, board):
            return int(pytest.main(_imported_plugins_quiet() + pytest_args_for_run(board, args, extra)))
    if not args.board:
        raise ConfigError("--board", ["run: give --board NAME (or --place / --reserve)"])
    board = load_board(args.board)
    if board.emulator is not None:
        ensure_qemu(auto_install=True, echo=lambda m: print(m, file=sys.stderr))
    # No garbage collection until pytest's session starts (the plugin freezes what start-up built, then
    # enables it): start-up builds objects that live as long as the run, and the collector walked them
    # again and again (measured: power-on 0.30 -> 0.28 s after start, pytest configured 0.65 -> 0.60 s).
    gc.disable()
    # SIGTERM, SIGHUP and SIGINT are kept (interrupt.keep) until pytest's plugin takes them over, and end
    # the run then; before pytest starts, a run stopped while its board powers on leaves no run directory
    # behind (EarlyBoard.abandon).
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, interrupt.keep)
    early = None
    try:
        if wanted(extra):
            early = EarlyBoard.start(args, extra)   # the board boots while pytest starts (pkvmlab/earlyboot.py)
        interrupt.raise_if_received()
        import pytest
        code = int(pytest.main(_imported_plugins_quiet() + pytest_args_for_run(board, args, extra),
                               plugins=[early] if early is not None else []))
        interrupt.raise_if_received()      # pytest ended before pkvmlab's plugin took the signal over
        return code
    finally:
        if early is not None:
            early.abandon()


def _imported_plugins_quiet():
    """pytest's warning that an imported plugin cannot be assert-rewritten, silenced where that is expected:
    labgrid is imported already when the run holds a place or powered its board on before pytest
    (pkvmlab/earlyboot.py), and in a matrix cell (forked warm, pkvmlab/cellserver.py) pytest's and
    pkvmlab's plugins are too.  Their asserts are not the suites'."""
    if "labgrid" not in sys.modules:
        return []
    return ["-W", "ignore:Module already imported so cannot be rewritten:pytest.PytestAssertRewriteWarning"]


def cmd_matrix(args):
    from .matrix import run_matrix
    return run_matrix(args)


def _add_place_options(parser, matrix=False):
    group = parser.add_argument_group("lab", "run on places of labgrid's coordinator (docs/lab.md)")
    if not matrix:
        group.add_argument("--place", help="acquire this place, run on it, release it")
    group.add_argument("--reserve", nargs="+", metavar="KEY=VALUE",
                       help="reserve " + ("every place" if matrix else "a place") + " whose tags match "
                            "(labgrid reservation), e.g. board=qemu-uboot")
    group.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait up to this long for a held place (default 0: fail at once naming the holder)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="labgrid coordinator (default: $LG_COORDINATOR, else the running `pkvmlab lab up`)")


def cmd_lab(args):
    from .lab import labservice
    from .lab.place import coordinator_address, release_place
    if args.lab_command == "up":
        state = labservice.up(args.lab, args.dir, args.coordinator, foreground=args.foreground)
        if state:
            print(f"pkvmlab lab: coordinator {state['coordinator']}, places {', '.join(state['places'])}\n"
                  f"  export LG_COORDINATOR={state['coordinator']}")
    elif args.lab_command == "down":
        print(labservice.down(args.dir))
    elif args.lab_command == "status":
        print("\n".join(labservice.status(args.dir, args.coordinator)))
    elif args.lab_command == "release":
        print(release_place(coordinator_address(args.coordinator, args.dir), args.place, force=args.force))
    return EXIT_OK


def _add_lab_parser(sub):
    lab = sub.add_parser("lab", help="a lab of places on labgrid's coordinator (docs/lab.md)")
    commands = lab.add_subparsers(dest="lab_command", required=True)
    up = commands.add_parser("up", help="start a coordinator, exporter(s) and places on 127.0.0.1")
    up.add_argument("--lab", help="lab file (default envs/lab-local.yaml)")
    up.add_argument("--foreground", action="store_true", help="stay in the foreground (service units)")
    down = commands.add_parser("down", help="stop the lab `lab up` started")
    status = commands.add_parser("status", help="the lab's processes and places, who holds each")
    release = commands.add_parser("release", help="release a place left acquired (a killed run)")
    release.add_argument("place")
    release.add_argument("--force", action="store_true", help="also when another user or a live run holds it")
    for parser in (up, down, status, release):
        parser.add_argument("--dir", help="lab directory (default $PKVMLAB_LAB_DIR, else <checkout>/.lab)")
        if parser is not down:
            parser.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address")
        parser.set_defaults(func=cmd_lab)


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
    lock = images.add_parser("lock", help="pin the exact Debian packages an image set (and the emulator) provision")
    which = lock.add_mutually_exclusive_group()
    which.add_argument("--board", default="qemu-virt", help="lock the image set (and emulator) of this board")
    which.add_argument("--set", help="lock this image set (images/<SET>.yaml)")
    lock.add_argument("--kernel-suite", help="comma-separated further kernel suites to pin (for the matrix)")
    lock.add_argument("--qemu", default="auto", help="emulator to pin (auto, or a Debian suite; as `run --qemu`)")
    lock.add_argument("--update", action="store_true", help="re-resolve every pin to the newest and rewrite")
    lock.set_defaults(func=cmd_images_lock)

    run = sub.add_parser("run", help="run the suites on a board (extra arguments go to pytest)")
    run.add_argument("--board", help=f"one of: {', '.join(known_boards())}")
    run.add_argument("--env", help="labgrid environment file instead of the board's")
    run.add_argument("--kernel-suite", help="boot the newest kernel of this Debian suite")
    run.add_argument("--kvm-mode", choices=("protected", "nvhe", "default", "none"))
    run.add_argument("--qemu", help="emulator for QEMU boards: auto (default), host, a Debian suite, or a path")
    run.add_argument("--cpu", help="QEMU -cpu instead of the board's emulator.cpu (e.g. cortex-a72: nVHE)")
    run.add_argument("--reports", help="reports directory (default: reports/)")
    run.add_argument("--run-id", help="name of the run directory")
    run.add_argument("--refresh", action="store_true", help="resolve image versions again")
    _add_place_options(run)
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
    matrix.add_argument("--no-health-check", dest="health_check", action="store_false",
                        help="run every cell even after one whose board failed to boot for the lab's reasons")
    _add_place_options(matrix, matrix=True)
    matrix.set_defaults(func=cmd_matrix)

    _add_lab_parser(sub)

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


def entry(argv=None):
    """The console script: ``main(argv)``, then exit without tearing the interpreter down.

    A run leaves nothing for interpreter finalisation to do but free the objects
    of pytest, labgrid and the run one by one (measured: 0.15-0.2 s, about 5 % of a
    board run).  The atexit handlers still run (labgrid's targets stop whatever
    they still drive), logs and standard streams are flushed, then the process
    ends with the run's exit code.
    """
    try:
        code = main(argv)
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
