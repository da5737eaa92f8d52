"""BootShellStrategy: off -> booting -> shell, once per session, with a deadline and a verdict on failure.

Like labgrid's ShellStrategy, but a boot that goes wrong ends in one clear
:class:`~pkvmlab.errors.BootError` instead of a hang or a bare pexpect TIMEOUT:
it watches the console for the shell prompt, a kernel panic, or the VM going
away, within ``boot_timeout`` seconds, and the error carries the last console
lines.  It also measures the boot (power on to prompt), which the run records.

``booting`` is the board powered on with nobody waiting for it yet: the run
powers the board on as soon as the environment is loaded and lets pytest
collect the suites while the kernel boots (labgrid's ShellStrategy only powers
on once a test asks for the shell).  Nothing is read from the console in that
state, so whoever asks for ``shell`` next reads the boot from its first byte.

Config:
    boot_timeout (float): seconds from power-on to the shell prompt (default 60)
"""

import enum
import re
import time

import attr
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy.common import Strategy, StrategyError, never_retry
from pexpect import EOF, TIMEOUT

from ..errors import BootError, InfrastructureError
from .strategystate import parse_status, prompt_left_unread

# Seen on the console: the boot cannot end in a shell any more.
BOOT_FAILURES = (
    ("kernel panic", re.compile(rb"Kernel panic - not syncing[^\r\n]*")),
    ("hypervisor panic", re.compile(rb"HYP panic[^\r\n]*")),
)


class Status(enum.Enum):
    unknown = 0
    off = 1
    booting = 2     # powered on, the console not read yet
    shell = 3


@target_factory.reg_driver
@attr.s(eq=False)
class BootShellStrategy(Strategy):
    bindings = {
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",
        "shell": "ShellDriver",
    }

    status = attr.ib(default=Status.unknown)
    boot_timeout = attr.ib(default=60.0, converter=float)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.boot_seconds = None
        self.console_log = None   # a pkvmlab.lab.consolelog.ConsoleLog, set by whoever wants one
        self._powered_on = None   # monotonic time of the last power-on

    @never_retry
    @step(args=["status"])
    def transition(self, status, *, step):  # pylint: disable=redefined-outer-name
        status = parse_status(Status, status)
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status.name}")
        if status == self.status:
            step.skip("nothing to do")
            return
        if status == Status.off:
            self.target.deactivate(self.shell)
            self.target.activate(self.power)
            self.power.off()
        elif status == Status.booting:
            self.transition(Status.off)
            self.target.activate(self.console)
            self._powered_on = time.monotonic()
            self.power.on()
        elif status == Status.shell:
            if self.status != Status.booting:
                self.transition(Status.booting)
            self._wait_for_prompt()
            self.target.activate(self.shell)
        self.status = status

    def _wait_for_prompt(self):
        prompt = prompt_left_unread(self.shell.prompt)
        started = self._powered_on
        patterns = [prompt] + [regex for _, regex in BOOT_FAILURES] + [EOF, TIMEOUT]
        # The deadline counts from power-on, however long the board was left booting unwatched.
        left = max(0.0, self.boot_timeout - (time.monotonic() - started))
        try:
            index, _, match, _ = self.console.expect(patterns, timeout=left)
        except InfrastructureError:
            # The power driver's start-up failed after power.on() returned (PkvmQEMUDriver finishes
            # QEMU's start-up while the board boots): its error, QEMU's own words, is the first cause.
            self._power_off()
            raise
        elapsed = time.monotonic() - started
        if index == 0:
            self.boot_seconds = elapsed      # the prompt itself is left for the ShellDriver
            return
        if index <= len(BOOT_FAILURES):
            what, _ = BOOT_FAILURES[index - 1]
            try:
                self.console.settle(0.5, timeout=3)   # let the panic's backtrace reach the log
            except (EOF, TIMEOUT):
                pass
            self._fail(f"{what}: {match.group(0).decode(errors='replace').strip()} ({elapsed:.1f} s into the boot)")
        if patterns[index] is EOF:
            code = self.power.exit_status(wait=2) if hasattr(self.power, "exit_status") else None
            # QEMU gone without a panic on its console: killed or crashed, the lab's fault.
            self._fail(f"QEMU died {elapsed:.1f} s into the boot (exit code {code})", infrastructure=True)
        self._fail(f"no shell prompt within {self.boot_timeout:.0f} s ({self.shell.prompt!r} never seen)")

    def _fail(self, message, infrastructure=False):
        tail = self.console_log.tail(25) if self.console_log else ""
        log = self.console_log.path if self.console_log else None
        self._power_off()
        error = BootError(f"{message} [{self.target.name}]", console_tail=tail, log_path=log)
        error.infrastructure = infrastructure
        raise error

    def _power_off(self):
        """Power off after a failed boot, best effort; a retry powers on again."""
        try:
            self.power.off()
        except Exception:  # noqa: BLE001 - the boot error is what matters; the power-off is best effort
            self.logger.warning("power off after a failed boot failed too", exc_info=True)
        self.status = Status.off

    @never_retry
    @step(args=["status"])
    def force(self, status, *, step):  # pylint: disable=redefined-outer-name
        status = parse_status(Status, status)
        if status == Status.off:
            self.target.activate(self.power)
        elif status == Status.shell:
            self.target.activate(self.power)
            self.target.activate(self.shell)
        self.status = status
