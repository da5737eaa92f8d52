"""pytest hooks of the pkvmlab plugin: options, run set-up, JUnit finishing, per-board selection."""

import gc
import json
import os
import signal
from pathlib import Path

import pytest
from _pytest.junitxml import xml_key

from ..errors import ConfigError, PkvmlabError
from .records import finish_records, start_records
from .run import KVM_ARM_MODES, RunState

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
    group.addoption("--refresh-images", dest="pkvmlab_refresh_images", action="store_true",
                    help="resolve kernel and packages again instead of using the cached resolution")


def _raise_sigterm_as_interrupt(signum, frame):
    # pytest writes its JUnit file after KeyboardInterrupt but not after SIGTERM.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "board_kind(*kinds): run the test only on boards of these kinds")
    try:
        run = RunState.from_options(config.option)
    except ConfigError as err:
        raise pytest.UsageError(str(err)) from None
    except PkvmlabError as err:
        raise pytest.UsageError(f"{type(err).__name__}: {err}") from None
    if run is None:
        return
    config.stash[RUN_KEY] = run
    run.export_environment()
    if not config.option.lg_env:
        config.option.lg_env = str(run.board.env)
    final = Path(config.option.xmlpath) if config.option.xmlpath else run.run_dir / "junit.xml"
    run.junit_final = final.resolve()
    run.junit_partial = run.junit_final.parent / f".{run.junit_final.name}.partial"
    config.option.xmlpath = str(run.junit_partial)
    if not config.option.log_file and not config.getini("log_file"):
        config.option.log_file = str(run.run_dir / "harness.log")
        config.option.log_file_level = config.option.log_file_level or "INFO"
    run.previous_sigterm = signal.signal(signal.SIGTERM, _raise_sigterm_as_interrupt)
    run.audit = start_records(run)


def pytest_unconfigure(config):
    run = config.stash.get(RUN_KEY, None)
    if run is not None:
        finish_records(run, getattr(run, "audit", None))
    if run is not None and getattr(run, "previous_sigterm", None) is not None:
        signal.signal(signal.SIGTERM, run.previous_sigterm)


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
    lines.append(f"pkvmlab report: {run.run_dir}")
    return lines


def pytest_sessionstart(session):
    run = session.config.stash.get(RUN_KEY, None)
    if run is not None:
        # A board run is one short process: what pytest, labgrid and the plugins built at start-up
        # lives until it ends.  Frozen, those objects are not walked again by every collection
        # (pytest itself runs several at the end): measured 0.05 s of a 3.5 s run.
        gc.freeze()
    xml = session.config.stash.get(xml_key, None)
    if run is None or xml is None:
        return
    xml.suite_name = run.suite_name
    for name, value in run.static_properties().items():
        xml.add_global_property(name, value)


def pytest_collection_modifyitems(config, items):
    """Deselect tests marked for other board kinds (android suites on a QEMU board, ...)."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        return
    keep, drop = [], []
    for item in items:
        kinds = {k for marker in item.iter_markers("board_kind") for k in marker.args}
        (drop if kinds and run.board.kind not in kinds else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report carries the console lines printed while it ran (trimmed)."""
    report = yield
    run = item.config.stash.get(RUN_KEY, None)
    report._pkvmlab_run = run
    session = run.session if run else None
    if run is not None and report.failed and call.excinfo is not None:
        _classify(run, report, call.excinfo.value)
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
    entry = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
             "duration": round(report.duration, 3)}
    if report.failed:
        entry["message"] = str(report.longrepr)[-2000:]
    with open(run.run_dir / "results.jsonl", "a") as journal:
        journal.write(json.dumps(entry) + "\n")


def _classify(run, report, exc):
    """File the failure in its class (pkvmlab.outcome); the JUnit file gets its type and message."""
    from ..outcome import classify
    session = run.session
    console = None
    if session is not None and session.console_log is not None:
        try:
            console = session.console_log.text()
        except OSError:
            console = None
    power = session.target.get_driver("PowerProtocol", activate=False) if session is not None else None
    outcome = classify(exc, console_text=console,
                       qemu_exit=power.exit_status() if hasattr(power, "exit_status") else None)
    report._pkvmlab_outcome = outcome
    run.outcomes[(report.nodeid, report.when)] = outcome


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
    """After pytest wrote its JUnit file: validate it, then move it into place atomically."""
    result = yield
    run = session.config.stash.get(RUN_KEY, None)
    if run is None or run.junit_partial is None or not run.junit_partial.exists():
        return result
    from ..report.junit import name_interrupted_case, validate_junit
    if run.running is not None:
        # pytest writes the interrupted test as a <testcase> without names: give them back.
        item = run.running
        classname = ".".join(item.nodeid.split("::")[:-1]).replace("/", ".").replace(".py", "") or item.path.stem
        data = run.junit_partial.read_bytes()
        repaired = name_interrupted_case(data, classname, item.name, f"interrupted while running {item.nodeid}")
        if repaired is not data:
            run.junit_partial.write_bytes(repaired)
    from ..outcome import exit_code
    from ..report.junit import apply_outcomes
    if run.outcomes:
        data = run.junit_partial.read_bytes()
        marked = apply_outcomes(data, run.outcomes)
        if marked is not data:
            run.junit_partial.write_bytes(marked)
    code = exit_code(o.kind for o in run.outcomes.values())
    if code is not None and session.exitstatus in (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.OK):
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
        return result
    os.replace(run.junit_partial, run.junit_final)
    from ..report.publish import HISTORY_NAME, publish_run
    published = publish_run(run.junit_final, run.reports_dir / HISTORY_NAME)
    log = f"console log {run.run_dir / 'console.log'}" if run.has_console else f"kernel log {run.run_dir / 'dmesg.txt'}"
    run.final_message = "\n".join([*published, f"pkvmlab: report {run.junit_final} ({log})"])
    return result


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say where the report is last, after pytest's own line about the partial file it wrote."""
    run = config.stash.get(RUN_KEY, None)
    message = getattr(run, "final_message", None)
    if message:
        terminalreporter.write_line(message, bold=True)
