"""BootShellStrategy: off -> shell, once per session, with a deadline and a verdict on failure.

Like labgrid's ShellStrategy, but a boot that goes wrong ends in one clear
:class:`~pkvmlab.errors.BootError` instead of a hang or a bare pexpect TIMEOUT:
it watches the console for the shell prompt, a kernel panic, or the VM going
away, within ``boot_timeout`` seconds, and the error carries the last console
lines.  It also measures the boot (power on to prompt), which the run records.

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

from ..errors import BootError
from .strategystate import parse_status

# Seen on the console: the boot cannot end in a shell any more.
BOOT_FAILURES = (
    ("kernel panic", re.compile(rb"Kernel panic - not syncing[^\r\n]*")),
    ("hypervisor panic", re.compile(rb"HYP panic[^\r\n]*")),
)


class Status(enum.Enum):
    unknown = 0
    off = 1
    shell = 2


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
        elif status == Status.shell:
            self.transition(Status.off)
            self.target.activate(self.console)
            self._boot_to_prompt()
            self.target.activate(self.shell)
        self.status = status

    def _boot_to_prompt(self):
        prompt = self.shell.prompt.encode() if isinstance(self.shell.prompt, str) else self.shell.prompt
        started = time.monotonic()
        self.power.on()
        patterns = [prompt] + [regex for _, regex in BOOT_FAILURES] + [EOF, TIMEOUT]
        index, _, match, _ = self.console.expect(patterns, timeout=self.boot_timeout)
        elapsed = time.monotonic() - started
        if index == 0:
            self.boot_seconds = elapsed
            # The prompt we matched is consumed; ask for a fresh one for the ShellDriver.
            self.console.sendline("")
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
        try:
            self.power.off()
        except Exception:  # noqa: BLE001 - the boot error is what matters; the power-off is best effort
            self.logger.warning("power off after a failed boot failed too", exc_info=True)
        error = BootError(f"{message} [{self.target.name}]", console_tail=tail, log_path=log)
        error.infrastructure = infrastructure
        raise error

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
