"""pytest hooks of the pkvmlab plugin: options, run set-up, JUnit finishing, per-board selection."""

import gc
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from _pytest.junitxml import xml_key

from .. import interrupt
from ..earlyboot import EarlyBoard
from ..errors import ConfigError, PkvmlabError
from ..runstate import KVM_ARM_MODES, RunState
from ..timeline import Timeline
from .records import finish_records, start_records

RUN_KEY = pytest.StashKey[RunState]()
_CONSOLE_MARK_KEY = pytest.StashKey[int]()


def pytest_addoption(parser):
    group = parser.getgroup("pkvmlab", "pkvmlab: board, images, reports")
    group.addoption("--board", dest="pkvmlab_board", metavar="NAME|FILE",
                    help="board to run on (boards/<NAME>.yaml); chooses its labgrid environment")
    group.addoption("--kernel-suite", dest="pkvmlab_kernel_suite", metavar="SUITE",
                    help="boot the newest Debian kernel of SUITE instead of the image set's (matrix runs)")
    group.addoption("--kvm-mode", dest="pkvmlab_kvm_mode", choices=KVM_ARM_MODES,
                    help="override kvm-arm.mode= on the kernel command line (expectations follow)")
    group.addoption("--qemu", dest="pkvmlab_qemu", metavar="SOURCE",
                    help="emulator for QEMU boards: auto (default: host QEMU if new enough for the board, else "
                         "Debian backports into the cache), host, a Debian suite, or a path to qemu-system-aarch64")
    group.addoption("--cpu", dest="pkvmlab_cpu", metavar="MODEL",
                    help="QEMU -cpu for QEMU boards instead of the board's emulator.cpu (e.g. cortex-a72: nVHE)")
    group.addoption("--reports", dest="pkvmlab_reports", metavar="DIR",
                    help="where run directories go (default: <repo>/reports)")
    group.addoption("--run-id", dest="pkvmlab_run_id", metavar="ID", help="name of the run directory")
    group.addoption("--strict-findings", dest="pkvmlab_strict_findings", action="store_true",
                    help="a board's known findings fail (JUnit type pkvmlab.finding.waived, exit 1) instead of "
                         "being waived (also PKVMLAB_STRICT_FINDINGS=1)")
    group.addoption("--refresh-images", dest="pkvmlab_refresh_images", action="store_true",
                    help="resolve kernel and packages again instead of using the cached resolution")


# Signals that end a run the way Ctrl-C does.  pytest writes its JUnit file after KeyboardInterrupt
# but not after SIGTERM or SIGHUP (the default action kills the process with no report at all).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt_handler(run):
    """SIGINT/SIGTERM/SIGHUP: end the run as Ctrl-C does (pytest then writes its JUnit file); the run
    remembers the first signal's name (``pkvmlab/interrupt.py`` says where it is raised, and where not).

    Until pytest's session runs (``pytest_collection``) the signal is only kept: raised while
    pytest configures its plugins or starts the session, a KeyboardInterrupt ends pytest with
    no ``pytest_sessionfinish``, so with no JUnit file, exit code 2 and the run half-written
    (measured: a SIGTERM 0.1 s after QEMU started).  ``pytest_collection`` raises it.
    """
    def handler(signum, frame):
        if run.interrupted_by is None:
            run.interrupted_by = signal.Signals(signum).name
        if not run.session_running:
            return
        interrupt.raise_interrupt(signum, frame)
    return handler


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session):
    """The session runs: an interrupt kept since configure (``_interrupt_handler``) ends it now."""
    run = session.config.stash.get(RUN_KEY, None)
    if run is None or run.dry:
        return
    run.session_running = True
    if run.interrupted_by is not None:
        raise KeyboardInterrupt(f"interrupted by {run.interrupted_by}")


# Options after which pytest only prints (help, the collected tests, the fixtures): a run of those
# leaves no run directory, no history row and no provisioning behind.
_PRINT_ONLY_OPTIONS = ("help", "version", "collectonly", "showfixtures", "show_fixtures_per_test", "markers")


def _print_only(config):
    return any(getattr(config.option, name, False) for name in _PRINT_ONLY_OPTIONS)


def _stop_before_start(err, dry):
    """End the run before anything is written, with one line and the exit code of the error's class.

    ``pytest.exit`` from configure prints ``Exit: <message>`` and returns its code (10 for
    configuration, 11 for infrastructure: ``pkvmlab.outcome``); under ``--help`` pytest configures
    outside its session, where only a UsageError is reported cleanly.
    """
    from ..outcome import classify
    outcome = classify(err)
    message = f"pkvmlab: {outcome.kind.name} error: " + (str(err) if isinstance(err, ConfigError)
                                                          else f"{type(err).__name__}: {err}")
    if dry:
        raise pytest.UsageError(message) from None
    pytest.exit(message, returncode=outcome.kind.exit_code)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "board(**facts): run the test only on boards whose file has these facts "
                                       "(console=adb, firmware=u-boot, ...)")
    dry = _print_only(config)
    early = config.pluginmanager.get_plugin(EarlyBoard.NAME)     # `pkvmlab run` set the run up (earlyboot.py)
    if early is not None and not dry:
        if early.error is not None:
            _stop_before_start(early.error, dry)
        run = early.run
        if run is None:
            return
        _take_signals(run)
        early.configured = True
        run.timeline.mark("configure")
    else:
        timeline = Timeline()
        timeline.mark("configure")
        try:
            run = RunState.from_options(config.option, dry=dry)
        except PkvmlabError as err:
            _stop_before_start(err, dry)
        if run is None:
            return
        _take_signals(run)
        timeline.mark("run_ready")
        run.timeline = timeline
        run.export_environment()
    config.stash[RUN_KEY] = run
    if not config.option.lg_env and early is None:
        config.option.lg_env = str(run.board.env)     # labgrid's plugin makes the environment from it
    if config.option.tbstyle == "auto":
        # A board that fails to boot fails every test with the same chain of causes through labgrid,
        # and pytest's default style parses the source of each frame of each: 3.4 s against 1.0 s for
        # a run whose PDU does not answer (23 errors, measured).  The first cause is in every message
        # and the summary (_classify) either way; --tb=... on the command line still wins.
        config.option.tbstyle = "native"
    if dry:
        return
    final = Path(config.option.xmlpath) if config.option.xmlpath else run.run_dir / "junit.xml"
    run.junit_final = final.resolve()
    run.junit_partial = run.junit_final.parent / f".{run.junit_final.name}.partial"
    config.option.xmlpath = str(run.junit_partial)
    if not config.option.log_file and not config.getini("log_file"):
        config.option.log_file = str(run.run_dir / "harness.log")
        config.option.log_file_level = config.option.log_file_level or "INFO"
    run.audit = start_records(run)


def _take_signals(run):
    """The plugin's interrupt handler, first thing once it has the run (see ``_interrupt_handler``)."""
    if not run.dry:
        if interrupt.received and run.interrupted_by is None:   # kept by `pkvmlab run` (cli.py): ours now
            run.interrupted_by = interrupt.received[0]
        interrupt.taken.append(True)
        handler = _interrupt_handler(run)
        run.previous_handlers = {sig: signal.signal(sig, handler) for sig in INTERRUPT_SIGNALS}


def pytest_unconfigure(config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None and not run.dry:
        from .fixtures import power_off_unused
        power_off_unused(run)
        finish_records(run, getattr(run, "audit", None))
        run.remove_scratch()
        run.timeline.mark("end")
        run.timeline.write(run.run_dir / "timeline.json")
    for sig, previous in (getattr(run, "previous_handlers", None) or {}).items():
        signal.signal(sig, previous)


def pytest_report_header(config):
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return None
    lines = [f"pkvmlab board: {run.board.name} ({run.board.soc}), env {run.board.env}",
             *([f"pkvmlab emulator: {run.emulator.version_line} ({run.emulator.source}, {run.emulator.binary}),"
                f" -cpu {run.cpu}"] if run.emulator else []),
             f"pkvmlab kernel args: {run.board.kernel_args or '(none)'}; expect {run.board.expect}"]
    if run.provisioned:
        kernel = run.provisioned.record.get("kernel", {})
        lines.append(f"pkvmlab images: {run.provisioned.directory} (kernel {kernel.get('release')} from "
                     f"{kernel.get('package', kernel.get('path'))} {kernel.get('version', '')})")
    lines.append(f"pkvmlab report: {run.run_dir}" + (" (not written: nothing runs)" if run.dry else ""))
    return lines


def pytest_sessionstart(session):
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        # A board run is one short process: what pytest, labgrid and the plugins built at start-up
        # lives until it ends.  Frozen, those objects are not walked again by every collection
        # (pytest itself runs several at the end): measured 0.05 s of a 3.5 s run.
        gc.freeze()
    gc.enable()     # `pkvmlab run` starts with it off (cli.py cmd_run)
    xml = session.config.stash.get(xml_key, None)
    if run is not None and xml is not None:
        xml.suite_name = run.suite_name
        for name, value in run.static_properties().items():
            xml.add_global_property(name, value)
    if run is not None and not run.dry:
        from .fixtures import power_on_early
        power_on_early(session.config, run)     # the board boots while pytest collects


def pytest_collection_modifyitems(config, items):
    """Deselect tests marked for boards with other facts (``board(console="adb")`` suites on a QEMU board)."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    keep, drop = [], []
    for item in items:
        wanted = [marker.kwargs for marker in item.iter_markers("board")]
        fits = all(getattr(run.board, fact) == value for facts in wanted for fact, value in facts.items())
        (keep if fits else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_collection_finish(session):
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.timeline.mark("collected")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the console lines printed while it ran (trimmed)."""
    report = yield
    run = item.config.stash.get(RUN_KEY, None)
    report._pkvmlab_run = run
    session = run.session if run else None
    if session is not None and call.when in ("setup", "call"):
        # What the board printed up to now belongs to the test that just ran (or the gap before this
        # one), not to whichever test reads the console next.
        session.drain_console()
    if run is not None and report.failed and call.excinfo is not None:
        _classify(run, report, call.excinfo.value, item)
    if run is not None and run.interrupted_by is not None and not item.session.shouldstop:
        # The handler's KeyboardInterrupt never reached pytest (swallowed in a weakref callback or below
        # the test): the session still ends here.
        item.session.shouldstop = f"interrupted by {run.interrupted_by}"
    if call.when == "setup":
        item.stash[_CONSOLE_MARK_KEY] = _console_size(session)
    if report.failed and session is not None and session.console_log is not None:
        from ..facts.console import excerpt
        start = item.stash.get(_CONSOLE_MARK_KEY, 0)
        text = _console_since(session.console_log.path, start)
        if text.strip():
            shown, what = excerpt(text, last=60)
            what = f"printed during the test: {what}"
        else:   # a check of boot facts: show where they were read, and how the log ends
            evidence = session.facts.evidence.values() if session.facts else ()
            shown, what = excerpt(session.console_log.text(), around=evidence)
        note = f"[console: {what}; full log: {session.console_log.path}]"
        report.sections.append(("Captured stdout console", "\n".join([note, *shown]) + "\n"))
        xml = item.config.stash.get(xml_key, None)
        if xml is not None:
            xml.add_global_property(f"{item.name}.console_log", "console.log")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Remember which test runs, so an interrupt can name it in the JUnit file."""
    run = item.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.running = item
    result = yield          # an interrupt raises here and leaves ``running`` set
    if run is not None:
        run.running = None
    return result


def pytest_runtest_logreport(report):
    """Journal every result as it happens: a run killed with SIGKILL (no JUnit) still leaves this."""
    run = getattr(report, "_pkvmlab_run", None)
    if run is None:
        return
    run.timeline.test_report(report)
    entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
             "duration": round(report.duration, 3)}
    if report.failed:
        entry["message"] = str(report.longrepr)[-2000:]
    if run.journal_error is not None:
        return
    try:
        with open(run.run_dir / "results.jsonl", "a") as journal:
            journal.write(json.dumps(entry) + "\n")
    except OSError as err:    # a full disk: the run goes on and says so once at the end
        run.journal_error = err


def _classify(run, report, exc, item):
    """File the failure in its class (pkvmlab.outcome); the JUnit file gets its type and message.

    An interrupt that the code below the test swallowed (labgrid's step machinery turns it into
    an error of its own: ``outcome.first_cause``) still ends the session, as pytest ends it for one
    that reaches it, and the test's message says what it was running."""
    from pexpect import EOF

    from ..outcome import classify, first_cause
    session = run.session
    console = None
    if session is not None and session.console_log is not None:
        try:
            console = session.console_log.text()
        except OSError:
            console = None
    power = None
    if session is not None:
        from labgrid.exceptions import NoDriverFoundError
        try:
            power = session.target.get_driver("PowerProtocol", activate=False)
        except NoDriverFoundError:     # a phone: adb and fastboot, no power driver
            power = None
    qemu_exit = power.exit_status() if hasattr(power, "exit_status") else None
    if qemu_exit is None and hasattr(power, "exit_status") and isinstance(first_cause(exc), EOF):
        qemu_exit = power.exit_status(wait=1)    # the console closed: QEMU is exiting
    outcome = classify(exc, console_text=console, qemu_exit=qemu_exit)
    finding = run.findings.get(report.nodeid)
    if finding is not None and finding.strict and report.when == "call":
        from ..outcome import BOARD, Outcome
        from ..report.record import STRICT_FINDING_TYPE
        outcome = Outcome(BOARD, finding.message, junit_type=STRICT_FINDING_TYPE)
    from ..outcome import INTERRUPTED
    if outcome.kind is INTERRUPTED:
        from ..outcome import Outcome
        label = item.nodeid if not item.nodeid.startswith("::") else f"{item.path}{item.nodeid}"
        outcome = Outcome(INTERRUPTED, f"{outcome.message} while running {label}")
        item.session.shouldstop = outcome.message
    report._pkvmlab_outcome = outcome
    run.outcomes[(report.nodeid, report.when)] = outcome
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:     # the terminal's short summary and pytest's JUnit message say the first cause
        crash.message = f"[{outcome.kind.name}] {outcome.message}"


def _mark_interrupted(session, run):
    """An interrupted run says so: the running test is an error of class interrupted, the suite
    carries ``pkvmlab.interrupted`` (history and the HTML report read it), the exit code is 14."""
    from ..outcome import INTERRUPTED, Outcome
    how = f"interrupted by {run.interrupted_by or 'SIGINT'}"
    if run.running is not None:
        item = run.running
        # A suite outside the rootdir has a node id of "::name": name its file instead.
        label = item.nodeid if not item.nodeid.startswith("::") else f"{item.path}{item.nodeid}"
        run.outcomes[(item.nodeid, "interrupted")] = Outcome(INTERRUPTED, f"{how} while running {label}")
    else:
        run.outcomes[("", "interrupted")] = Outcome(INTERRUPTED, how)
    xml = session.config.stash.get(xml_key, None)
    if xml is not None:
        xml.add_global_property("pkvmlab.interrupted", run.interrupted_by or "SIGINT")


def _console_size(session):
    if session is None or session.console_log is None:
        return 0
    try:
        return os.path.getsize(session.console_log.path)
    except OSError:
        return 0


def _console_since(path, offset):
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session, exitstatus):
    """After pytest wrote its JUnit file: validate it, then move it into place atomically.

    A report that cannot be written (disk full, directory gone) ends the run with
    one line naming the file and the error, exit code 11 (infrastructure), and
    no partial file left behind that a dashboard could take for a result.
    """
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        run.timeline.mark("sessionfinish")
    interrupted = run is not None and (run.interrupted_by is not None or exitstatus == pytest.ExitCode.INTERRUPTED)
    if interrupted:
        _mark_interrupted(session, run)
    try:
        result = yield
        if run is None or run.junit_partial is None or not run.junit_partial.exists():
            return result
        _finish_report(session, run)
        run.timeline.mark("report_written")
        return result
    except OSError as err:
        if run is None:
            raise
        _report_not_written(session, run, err)
        return None


def _report_not_written(session, run, err):
    from ..outcome import INFRASTRUCTURE
    if run.junit_partial is not None:
        try:
            run.junit_partial.unlink(missing_ok=True)
        except OSError:
            pass
    where = err.filename or run.run_dir
    message = f"pkvmlab: infrastructure error: the report could not be written: {err.strerror or err} ({where})"
    console = run.session.console_log if run.session is not None else None
    if console is not None and console.write_error is not None:
        message += f"; the console log stopped early: {console.write_error.strerror} ({console.path})"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(message, red=True)
    else:
        print(message, file=sys.stderr)
    run.final_message = message
    session.exitstatus = INFRASTRUCTURE.exit_code


def _finish_report(session, run):
    from ..outcome import exit_code
    from ..report.cases import finish_cases
    from ..report.junit import apply_outcomes, name_interrupted_case, validate_junit
    if run.running is not None:
        # pytest writes the interrupted test as a <testcase> without names: give them back.
        item = run.running
        classname = ".".join(item.nodeid.split("::")[:-1]).replace("/", ".").replace(".py", "") or item.path.stem
        data = run.junit_partial.read_bytes()
        outcome = run.outcomes.get((item.nodeid, "interrupted"))
        message = outcome.message if outcome else f"ended while running {item.nodeid}"
        repaired = name_interrupted_case(data, classname, item.name, message,
                                         outcome.kind.junit_type if outcome else None)
        if repaired is not data:
            run.junit_partial.write_bytes(repaired)
    if run.outcomes:
        data = run.junit_partial.read_bytes()
        marked = apply_outcomes(data, run.outcomes)
        if marked is not data:
            run.junit_partial.write_bytes(marked)
    data = run.junit_partial.read_bytes()
    run.junit_partial.write_bytes(finish_cases(
        data, run.identity, measured=run.case_measured, findings=run.findings,
        console_log=os.path.relpath(run.run_dir / "console.log", run.junit_final.parent) if run.has_console else None,
        run_dir=run.junit_final.parent, roots=_portable_roots(), boot=run.boot_cost))
    code = exit_code(o.kind for o in run.outcomes.values())
    if code is not None and session.exitstatus in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.OK,
                                                   pytest.ExitCode.INTERRUPTED):
        session.exitstatus = code
    problems = validate_junit(run.junit_partial)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if problems:
        bad = run.junit_final.with_suffix(".invalid.xml")
        os.replace(run.junit_partial, bad)
        message = f"pkvmlab: JUnit output failed schema validation, kept as {bad}:\n  " + "\n  ".join(problems[:10])
        if reporter:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        return
    os.replace(run.junit_partial, run.junit_final)
    from ..report.publish import HISTORY_NAME, disk_full, publish_run
    problems = []
    published = publish_run(run.junit_final, run.reports_dir / HISTORY_NAME, problems=problems)
    log = f"console log {run.run_dir / 'console.log'}" if run.has_console else f"kernel log {run.run_dir / 'dmesg.txt'}"
    run.final_message = "\n".join([*published, f"pkvmlab: report {run.junit_final} ({log})"])
    full = disk_full([*problems, run.journal_error])
    console = run.session.console_log if run.session is not None else None
    if full is None and console is not None and console.write_error is not None:
        full = console.write_error
    if full is not None:    # the JUnit file is whole, but the lab lost part of the run's record
        from ..outcome import INFRASTRUCTURE
        what = getattr(full, "filename", None) or run.reports_dir
        run.final_message += (f"\npkvmlab: infrastructure error: the run's record is incomplete: "
                              f"No space left on device ({what})")
        session.exitstatus = INFRASTRUCTURE.exit_code


def _portable_roots():
    """Where the absolute paths in properties usually lie, by the name a property value keeps."""
    from ..boards import project_root
    from ..images.cache import default_cache_dir
    return (("PKVMLAB_CACHE", Path(default_cache_dir()).resolve()), ("PKVMLAB_ROOT", project_root().resolve()))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the report is last, after pytest's own line about the partial file it wrote."""
    run = config.stash.get(RUN_KEY, None)
    message = getattr(run, "final_message", None)
    if message:
        terminalreporter.write_line(message, bold=True)
