"""Fixtures the suites use: the board, a booted board session, and measured values into JUnit."""

import pytest
from _pytest.junitxml import xml_key


@pytest.fixture(scope="session")
def pkvmlab_run(request):
    from .hooks import RUN_KEY
    run = request.config.stash.get(RUN_KEY, None)
    if run is None:
        raise pytest.UsageError("board suites need a board: pass --board NAME (see boards/) or an "
                                "--lg-env whose options name pkvmlab_board")
    return run


@pytest.fixture(scope="session")
def board(pkvmlab_run):
    return pkvmlab_run.board


def _property_adder(config, run):
    xml = config.stash.get(xml_key, None)

    def add(name, value):
        run.measured[name] = value
        if xml is not None:
            xml.add_global_property(name, str(value))
    return add


@pytest.fixture(scope="session")
def booted(request, pkvmlab_run, target):
    """The board, booted once for the whole session to its ready state, with its facts collected."""
    # Imported here, not at module level: importing labgrid while pytest loads plugins
    # stops pytest from rewriting asserts in labgrid's own pytest plugin (and it warns).
    from ..earlyboot import configure_strategy
    from ..lab.boardsession import BoardSession
    from ..lab.consolelog import ConsoleLog
    from ..report.warmup import prepare_report
    run = pkvmlab_run
    add_property = _property_adder(request.config, run)
    strategy = target.get_strategy()
    configure_strategy(strategy, run.board)
    console_log = None
    try:
        console = target.get_driver("ConsoleProtocol", activate=False)
    except Exception:  # noqa: BLE001 - boards without a console (phones over adb) use dmesg instead
        console = None
    if console is not None:
        console_log = ConsoleLog(console, run.run_dir / "console.log")
    if hasattr(strategy, "console_log"):
        strategy.console_log = console_log
    session = BoardSession(board=run.board, target=target, strategy=strategy, run_dir=run.run_dir,
                           provisioned=run.provisioned, console_log=console_log)
    run.session = session
    say = _terminal_line(request.config)
    log_path = f"; console log {console_log.path}" if console_log is not None else ""
    say(f"pkvmlab: booting {run.board.name} to '{run.board.ready_state}' "
        f"(boot timeout {run.board.boot_timeout:.0f} s{log_path})")
    try:
        run.timeline.mark("boot_wait")
        if run.powered_on_early is None:
            run.timeline.mark("boot_start")
        prepare_report()      # while the harness waits for the board (pkvmlab/report/warmup.py)
        boot_with_retries(run, strategy, console_log, say, add_property)
        run.timeline.mark("shell")
        if session.boot_seconds is not None:
            add_property("pkvmlab.boot_seconds", f"{session.boot_seconds:.3f}")
        facts = session.collect_facts()
        run.timeline.mark("facts")
        marks = dict(run.timeline.marks)
        # What this test's setup spent on the boot (the part before it, if the board was powered on early,
        # was pytest's collection time, not the test's).
        run.boot_cost = (run.running.nodeid if run.running is not None else None,
                         marks["facts"] - marks["boot_wait"])
        took = f" in {session.boot_seconds:.1f} s" if session.boot_seconds is not None else ""
        say(f"pkvmlab: {run.board.name} ready{took}: kernel {session.runtime.release or facts.kernel_release}, "
            f"boot {facts.boot_el or 'EL unknown'}, KVM {facts.kvm_mode or 'unknown'}")
        add_property("pkvmlab.kernel_release", session.runtime.release or facts.kernel_release)
        add_property("pkvmlab.boot_el", facts.boot_el or "unknown")
        add_property("pkvmlab.kvm_mode", facts.kvm_mode or "unknown")
        add_property("pkvmlab.kvm_line", facts.kvm_line or "")
        add_property("pkvmlab.dev_kvm", "yes" if session.runtime.dev_kvm else "no")
        if console_log is not None:
            add_property("pkvmlab.firmware", facts.firmware.describe())
        for name, value in wiring_properties(target).items():
            add_property(name, value)
        _name_suite_after_boot(request.config, run, session, facts)
        yield session
        strategy.transition("off")
    finally:
        if console_log is not None:
            console_log.close()


def power_on_early(config, run):
    """Power the board on now (session start), so that it boots while pytest collects the suites.

    ``pkvmlab run`` has done it before pytest started (``pkvmlab/earlyboot.py``); with pytest as
    the entry point it is done here, through the environment labgrid's plugin made.
    """
    from labgrid.pytestplugin.hooks import LABGRID_ENV_KEY

    from ..earlyboot import power_on
    if run.powered_on_early is not None:
        return run.powered_on_early
    return power_on(config.stash.get(LABGRID_ENV_KEY, None), run)


def power_off_unused(run):
    """A board powered on early that no test asked for (``-k`` matched no board test, a collection
    error) is switched off again."""
    strategy = run.powered_on_early
    if strategy is None or strategy.broken is not None or getattr(strategy.status, "name", None) != "booting":
        return      # used, or failed (a failed boot powered off already)
    try:
        strategy.transition("off")
    except Exception:  # noqa: BLE001 - best effort at the end of a run; QEMU dies with the harness anyway
        strategy.logger.warning("powering off the unused board failed", exc_info=True)


def wiring_properties(target):
    """What the board was reached through: the console resource, and the firmware image's package.

    ``pkvmlab.console_resource`` names the labgrid resource and its address
    (``NetworkSerialPort 127.0.0.1:40123 raw``); on a QEMU bench board the
    firmware image's Debian package (``u-boot-qemu 2023.01+dfsg-2+deb12u3``) is
    ``pkvmlab.firmware_package``, since EDK II's banner carries no version.
    """
    from ..images.emulator import host_package
    props = {}
    for resource in target.resources:
        kind = type(resource).__name__
        if kind == "NetworkSerialPort":
            props["pkvmlab.console_resource"] = f"{kind} {resource.host}:{resource.port} {resource.protocol}"
        elif kind in ("RawSerialPort", "USBSerialPort") and getattr(resource, "port", None):
            props["pkvmlab.console_resource"] = f"{kind} {resource.port}"
    for driver in target.drivers:
        if type(driver).__name__ == "PkvmQEMUDriver" and "pkvmlab.console_resource" not in props:
            props["pkvmlab.console_resource"] = "PkvmQEMUDriver (QEMU's serial on a local socket)"
        if type(driver).__name__ == "QEMUPowerSwitchDriver" and driver.bios:
            package = host_package(target.env.config.get_image_path(driver.bios))
            if package:
                props["pkvmlab.firmware_package"] = package
    return props


def boot_with_retries(run, strategy, console_log, say, add_property):
    """Bring the board to its ready state; retry only when the lab failed, up to ``boot_retries``.

    A boot that failed for an infrastructure reason (QEMU died, the power switch
    did not answer, a device dropped off) is tried again, at most the board
    file's ``boot_retries`` times; a board finding (panic, hang, wrong prompt) is
    never retried: retrying it would hide it.  Every attempt is recorded in
    ``boot_attempts.json`` and as ``pkvmlab.boot_attempts``; the tests see one
    verdict, from the last attempt.  The console log marks where each retry starts.
    """
    import json
    import time

    from ..outcome import INFRASTRUCTURE, classify
    attempts = []
    try:
        for number in range(1, run.board.boot_retries + 2):
            started = time.monotonic()
            try:
                strategy.transition(run.board.ready_state)
            except Exception as exc:   # noqa: BLE001 - classified here, re-raised unless the lab's
                outcome = classify(exc, console_text=console_log.text() if console_log is not None else None)
                attempts.append({"attempt": number, "class": outcome.kind.name, "message": outcome.message,
                                 "seconds": round(time.monotonic() - started, 3)})
                if outcome.kind is not INFRASTRUCTURE or number > run.board.boot_retries:
                    raise
                say(f"pkvmlab: boot attempt {number} failed ({outcome.kind.name}: {outcome.message}); "
                    f"retrying ({number} of {run.board.boot_retries})")
                strategy.broken = None     # labgrid's never_retry keeps the error; this retry is ours
                if console_log is not None:
                    console_log.mark_attempt(number + 1)
                continue
            attempts.append({"attempt": number, "class": None, "message": "ready",
                             "seconds": round(time.monotonic() - started, 3)})
            return
    finally:
        add_property("pkvmlab.boot_attempts", str(len(attempts)))
        (run.run_dir / "boot_attempts.json").write_text(json.dumps(attempts, indent=2) + "\n")


def _terminal_line(config):
    """A writer of whole lines to the terminal, past pytest's capture: a lab engineer watching a
    board that takes a minute to boot sees that it is booting, and how it came up."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return lambda text: None

    def say(text):
        if capture is None:
            reporter.write_line(text)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
    return say


def _name_suite_after_boot(config, run, session, facts):
    """``board/kernel/mode`` from what booted, when the image set could not say (a phone's ready images)."""
    xml = config.stash.get(xml_key, None)
    if xml is None or (run.provisioned and run.provisioned.kernel_release):
        return
    release = session.runtime.release or facts.kernel_release or "unknown-kernel"
    mode = run.board.kvm_arm_mode if run.board.kernel_args else facts.kvm_arm_mode
    xml.suite_name = f"{run.board.name}/{release}/{mode}"


@pytest.fixture(scope="session")
def suite_property(request, pkvmlab_run):
    """suite_property(name, value): a testsuite property of the run (e.g. ``pkvmlab.pvm.create``)."""
    return _property_adder(request.config, pkvmlab_run)


@pytest.fixture
def measured(request, pkvmlab_run):
    """measured(key, value): a value this test measured, as testsuite property ``<test>.<key>`` and
    as a ``key = value`` line in the test case's own ``system-out``.

    Per-testcase <properties> are invalid in Jenkins' junit-10.xsd, hence suite level; dashboards that
    read no properties (GitLab, Allure) show the case's system-out beside the test.
    """
    add = _property_adder(request.config, pkvmlab_run)
    values = pkvmlab_run.case_measured.setdefault(request.node.nodeid, {})

    def record(key, value):
        add(f"{request.node.name}.{key}", value)
        values[key] = value
    return record
