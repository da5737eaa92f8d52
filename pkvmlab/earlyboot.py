"""``pkvmlab run``: the board powered on before pytest starts.

Why: on a QEMU board the boot is the run's floor, and whatever the harness does
before the power-on is added to it.  Through pytest, the power-on waits for
pytest's import and start-up, labgrid's pytest plugin (with its gRPC client) and
pkvmlab's plugin: 0.48 s after the process started (measured on the 2-core CI
machine), of which the power-on needs only the interpreter, labgrid, and the
provisioning check (about 0.3 s).  So ``pkvmlab run`` does those first, powers the
board on through labgrid (the environment, target and strategy the run then
uses: nothing is made twice), and starts pytest while the board boots.  Before
all of it, a QEMU board's QEMU is started paused from the command line the same
invocation's driver built last time, and the driver uses it only if its own
command is the same (``pkvmlab/qemuprestart.py``).  The
pytest plugin takes the run's state and labgrid's environment from ``EarlyBoard``,
a pytest plugin object handed to ``pytest.main``, instead of making them itself.

``pytest --board NAME`` (pytest as the entry point) powers the board on at
session start instead (``plugin/fixtures.py``, ``power_on_early``), as does
``pkvmlab run`` with options that print only or that choose the board or the
environment in pytest's spelling (``NOT_EARLY``).

This module imports neither pytest nor pkvmlab's plugin package: it runs before them.
"""

import argparse
import contextlib
import logging
import os
import threading

import pluggy

from . import qemuprestart

hookimpl = pluggy.HookimplMarker("pytest")

# pytest options with which `pkvmlab run` leaves the power-on to pytest's session start: they print
# only (nothing boots), or name the board, environment, coordinator or run where pytest parses them.
NOT_EARLY = ("-h", "--help", "--version", "-V", "--co", "--collect-only", "--collectonly", "--fixtures",
             "--funcargs", "--fixtures-per-test", "--markers", "--board", "--lg-env", "--lg-coordinator",
             "--kernel-suite", "--kvm-mode", "--qemu", "--cpu", "--reports", "--run-id", "--refresh-images")


def configure_strategy(strategy, board):
    """What the board file says about booting, given to the strategy before it powers on."""
    if hasattr(strategy, "boot_timeout"):
        strategy.boot_timeout = board.boot_timeout


def power_on(env, run):
    """Power the board of labgrid environment ``env`` on, into its strategy's ``booting`` state.

    Only for a strategy with a ``booting`` state (``BootShellStrategy``, ``FirmwareShellStrategy``:
    powered on, console not read yet); the ``booted`` fixture then waits for the prompt from there.  Anything that goes
    wrong here (a broken environment, QEMU exiting at start) is left to that fixture: labgrid's
    ``never_retry`` keeps the strategy's first error, so the first test that needs the board fails
    with that cause, classified and in the JUnit file, exactly as if it had powered on itself.
    Returns the strategy when it is booting.
    """
    try:
        target = env.get_target() if env is not None else None
        strategy = target.get_strategy() if target is not None else None
    except Exception:  # noqa: BLE001 - the target/strategy fixtures raise it again, where it is reported
        return None
    if strategy is None or "booting" not in getattr(type(strategy.status), "__members__", {}):
        return None
    configure_strategy(strategy, run.board)
    run.timeline.mark("boot_start")
    run.powered_on_early = strategy
    try:
        strategy.transition("booting")
    except Exception:  # noqa: BLE001, S110 - kept by never_retry as strategy.broken; the fixture reports it
        pass
    if run.board.emulator is not None:
        yield_cpu_to_the_emulator()
    return strategy


EMULATOR_NICE = 10


def yield_cpu_to_the_emulator():
    """Lower this thread's CPU priority (nice +EMULATOR_NICE) below the emulated board's.

    Why: an emulated board runs on the harness's own machine, and what the harness does while
    it boots (pytest's start-up and collection, the report's warm-up: about 0.4 s of CPU) took
    cores from it.  It matters most where QEMU keeps both cores busy: U-Boot fetching the kernel
    over QEMU's own TFTP server (the guest and the server, one core each).  Measured on the
    2-core CI machine, qemu-uboot boot suite, 6 alternated runs each: 6.18 s -> 5.75 s (raw floor
    4.71 s); on qemu-virt, whose boot mostly keeps one core busy, the difference was within the
    noise.  The harness has nothing to do while the board boots but to wait for it.

    Only the calling thread is lowered (Linux keeps a nice value per thread): console reader
    threads started before it (``PkvmQEMUDriver``'s pump) keep theirs.  Threads the caller
    starts later, and processes it spawns, inherit the lower priority; without privilege a
    thread cannot raise it back.
    """
    try:
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < EMULATOR_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, EMULATOR_NICE)
    except (OSError, AttributeError):
        pass       # not Linux, or not allowed: the run is only slower


class _KeptRecords(logging.Handler):
    def __init__(self, records):
        super().__init__(logging.DEBUG)
        self.records = records

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _kept_logs():
    """The log records of what runs inside, with labgrid's step log on, as pytest's run would log them.

    harness.log is pytest's log file, whose handler exists only once pytest's session starts; labgrid's
    StepLogger (its ``→ PkvmQEMUDriver.on()`` lines) is started by labgrid's pytest plugin, and it must
    not be running when that plugin starts it.  So it runs here for the power-on only, and the records
    are handed to pytest's handlers at session start (``EarlyBoard.pytest_sessionstart``).
    """
    from labgrid.logging import StepLogger
    records, root = [], logging.getLogger()
    keeper, level = _KeptRecords(records), root.level
    root.addHandler(keeper)
    root.setLevel(logging.DEBUG)
    StepLogger.start()
    try:
        yield records
    finally:
        StepLogger.stop()
        root.removeHandler(keeper)
        root.setLevel(level)


def _import_labgrid():
    try:
        import labgrid  # noqa: F401

        import pkvmlab.lab  # noqa: F401 - pkvmlab's drivers and strategies, registered with labgrid
    except Exception:  # noqa: BLE001, S110 - imported again in the main thread, which raises it there
        pass


def wanted(extra):
    """Whether `pkvmlab run` with these pytest arguments powers the board on before pytest starts."""
    return not any(arg.split("=", 1)[0] in NOT_EARLY for arg in extra)


class EarlyBoard:
    """The run set up and its board powered on by ``pkvmlab run``; a pytest plugin for ``pytest.main``.

    ``error``: the PkvmlabError that stopped the set-up (bad board file, missing image); the pytest
    plugin reports it exactly as if it had met it itself.  ``configured``: whether pytest took the run
    over (a pytest usage error in the extra arguments stops pytest before that: ``abandon`` then).
    """

    NAME = "pkvmlab-early"

    def __init__(self, run=None, env=None, error=None):
        self.__name__ = self.NAME      # the name pytest registers this plugin object under
        self.run, self.env, self.error = run, env, error
        self.configured = False
        self.log_records = []          # the power-on's log records, until pytest's handlers exist

    @classmethod
    def start(cls, args, extra):
        """Set the run up from `pkvmlab run`'s arguments and power its board on."""
        from .timeline import Timeline
        timeline = Timeline()
        timeline.mark("cli")
        # QEMU starts paused from the last same run's command line, checked against the driver's
        # once labgrid is imported (pkvmlab/qemuprestart.py); a new image set is not guessed at.
        if not args.refresh and qemuprestart.start(qemuprestart.key_of(
                board=args.board, env=args.env, qemu=args.qemu, cpu=args.cpu, kvm_mode=args.kvm_mode,
                kernel_suite=args.kernel_suite)) is not None:
            timeline.mark("qemu_prestart")
        try:
            return cls._start(args, extra, timeline)
        finally:
            qemuprestart.discard()      # no driver took it: the run stopped before its board's activation

    @classmethod
    def _start(cls, args, extra, timeline):
        from .errors import PkvmlabError
        from .runstate import RunState
        # labgrid is imported meanwhile: the provisioning check hashes what will boot (0.04 s in hashlib,
        # which lets go of the GIL: images/cache.py sha256_file) while the import runs Python.
        importing = threading.Thread(target=_import_labgrid, name="pkvmlab-import-labgrid", daemon=True)
        importing.start()
        option = argparse.Namespace(
            pkvmlab_board=args.board, lg_env=args.env, pkvmlab_qemu=args.qemu, pkvmlab_cpu=args.cpu,
            pkvmlab_kvm_mode=args.kvm_mode, pkvmlab_kernel_suite=args.kernel_suite, pkvmlab_reports=args.reports,
            pkvmlab_run_id=args.run_id, pkvmlab_refresh_images=args.refresh,
            pkvmlab_strict_findings="--strict-findings" in extra)
        try:
            run = RunState.from_options(option)
        except PkvmlabError as err:
            importing.join()
            return cls(error=err)
        if run is None:
            importing.join()
            return None
        early = cls(run)
        try:
            importing.join()
            timeline.mark("run_ready")
            run.timeline = timeline
            run.export_environment()
            from labgrid import Environment

            import pkvmlab.lab  # noqa: F401 - pkvmlab's drivers and strategies, registered with labgrid
            early.env = Environment(config_file=str(args.env or run.board.env))   # as the plugin sets --lg-env
            with _kept_logs() as early.log_records:
                power_on(early.env, run)
        except BaseException:       # interrupted (Ctrl-C, SIGTERM) before pytest took the run over
            early.abandon()
            raise
        return early

    @hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session):
        """labgrid's plugin keeps its environment in ``config.stash``: this run's is the one made here.

        (Its configure hook found no ``--lg-env``, so it made none; the first hook after it that
        is not historic, and so can run after it, is the session start's.)"""
        if self.env is not None and self.configured:
            from labgrid.pytestplugin.hooks import LABGRID_ENV_KEY
            session.config.stash[LABGRID_ENV_KEY] = self.env
        # pytest's log handlers (harness.log) are attached now: the power-on's records go there first.
        root = logging.getLogger()
        for record in self.log_records:
            for handler in root.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.log_records = []

    def abandon(self):
        """pytest stopped before it took the run over: power the board off, remove what set-up wrote."""
        run = self.run
        if run is None or self.configured:
            return
        strategy = run.powered_on_early
        try:
            if strategy is not None:
                strategy.transition("off")
            if self.env is not None:
                self.env.cleanup()
        except Exception:  # noqa: BLE001, S110 - QEMU dies with this process anyway (die_with_parent)
            pass
        run.remove_scratch()
        for name in ("images.json",):
            (run.run_dir / name).unlink(missing_ok=True)
        try:
            run.run_dir.rmdir()       # only when nothing else is in it (a reused --run-id keeps its files)
        except OSError:
            pass
