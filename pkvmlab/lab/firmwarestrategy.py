"""FirmwareShellStrategy: off -> booting -> firmware -> shell on a board booted by its firmware (U-Boot or UEFI).

Why ours: labgrid's UBootStrategy has no deadline of its own and no verdict
(a missing prompt is a bare pexpect TIMEOUT), and knows nothing of TFTP
staging or of a UEFI board that boots without a firmware shell.  This one
stages kernel and initrd through labgrid's TFTPProviderDriver, powers on
through the PowerProtocol (a PDU, or our QEMUPowerSwitch), reaches U-Boot's
prompt with labgrid's UBootDriver, issues the boot commands, and waits for the
shell prompt, every wait bounded; a failure is one BootError whose first line
names the first cause (power/QEMU error, no U-Boot prompt, TFTP failure,
panic, timeout) with the console's last lines.

``booting`` is the board staged, powered on and its console open, with nobody
reading it yet (as BootShellStrategy's): the run powers on while pytest
collects.  The serial server (or QEMU's TCP socket) buffers what the firmware
prints meanwhile, and U-Boot's autoboot countdown (2 s on Debian's QEMU build)
is far longer than a collection (about 0.1 s).

Config:
    boot_timeout (float): seconds from power-on to the shell prompt (the run sets it from the board file)
    stage (list): image keys staged to TFTP before power-on (U-Boot boards)
    boot_commands (list): U-Boot commands issued at its prompt, in order
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
from . import tftpstage
from .bootstrategy import BOOT_FAILURES
from .strategystate import parse_status, prompt_left_unread

FAILURES = (
    ("TFTP failed", re.compile(rb"(?:TFTP error[^\r\n]*|Retry count exceeded[^\r\n]*|"
                               rb"File not found[^\r\n]*|ERROR: can't get kernel image[^\r\n]*)")),
    ("wrong image", re.compile(rb"(?:Bad Linux ARM64 Image magic[^\r\n]*|Wrong Ramdisk Image Format[^\r\n]*)")),
    *BOOT_FAILURES,   # the kernel's own: one panic table for every strategy
)


class Status(enum.Enum):
    unknown = 0
    off = 1
    booting = 2     # staged, powered on, console open and not read yet
    firmware = 3
    shell = 4


@target_factory.reg_driver
@attr.s(eq=False)
class FirmwareShellStrategy(Strategy):
    bindings = {
        "switch": {"QEMUPowerSwitchDriver", None},
        "power": "PowerProtocol",
        "console": "ConsoleProtocol",
        "uboot": {"UBootDriver", None},
        "tftp": {"TFTPProviderDriver", None},
        "shell": "LinuxShellDriver",
    }

    status = attr.ib(default=Status.unknown)
    boot_timeout = attr.ib(default=90.0, converter=float)
    stage = attr.ib(default=attr.Factory(list), converter=list)
    boot_commands = attr.ib(default=attr.Factory(list), converter=list)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.boot_seconds = None
        self.prompt_seconds = None    # power-on -> firmware prompt (U-Boot)
        self.console_log = None
        self._started = None

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
            self._off()
        elif status == Status.booting:
            self.transition(Status.off)
            self._power_on()
        elif status == Status.firmware:
            if self.status != Status.booting:
                self.transition(Status.booting)
            if self.uboot is not None:
                self._uboot_prompt()
        elif status == Status.shell:
            if self.status != Status.firmware:
                self.transition(Status.firmware)
            if self.uboot is not None:
                self._uboot_commands()
            self._shell_prompt()
            self.target.activate(self.shell)
        self.status = status

    def _off(self):
        self.target.deactivate(self.shell)
        if self.uboot is not None:
            self.target.deactivate(self.uboot)
        self.target.deactivate(self.console)
        if self.switch is not None:
            self.target.activate(self.switch)
        self.target.activate(self.power)
        try:
            self.power.off()
        except Exception as error:  # noqa: BLE001 - a PDU that does not answer is the first cause, in one line
            self._fail(f"power off failed: {error}", power_off=False, infrastructure=True)

    def _left(self):
        return max(1.0, self.boot_timeout - (time.monotonic() - self._started))

    def _power_on(self):
        if self.tftp is not None:
            self.target.activate(self.tftp)
            for key in self.stage:    # a place's TFTP root on this host is linked into without SSH (tftpstage)
                tftpstage.stage(self.tftp, self.target.env.config.get_image_path(key))
        self._started = time.monotonic()
        try:
            self.power.on()
        except Exception as error:  # noqa: BLE001 - any power failure is the first cause, said in one line
            self._fail(f"power on failed: {error}", power_off=False, infrastructure=True)
        try:
            self.target.activate(self.console)
        except Exception as error:  # noqa: BLE001 - a serial server that refuses is the first cause
            self._fail(f"console {self._console_name()} did not open: {error}", infrastructure=True)

    def _console_name(self):
        port = getattr(self.console, "port", None)
        return f"{getattr(port, 'host', '?')}:{getattr(port, 'port', '?')}" if port is not None else "?"

    def _uboot_prompt(self):
        self.uboot.login_timeout = int(self._left())
        try:
            self.target.activate(self.uboot)
        except (TIMEOUT, EOF, Exception) as error:  # noqa: BLE001 - UBootDriver raises bare pexpect errors
            what = "the console closed" if isinstance(error, EOF) else type(error).__name__
            self._fail(f"U-Boot never printed its prompt ({self.uboot.prompt!r}) within "
                       f"{time.monotonic() - self._started:.0f} s of power-on ({what})")
        self.prompt_seconds = time.monotonic() - self._started

    def _uboot_commands(self):
        """Each command waits for U-Boot's prompt (typed-ahead input is lost while TFTP runs); the last boots."""
        *setup, boot = self.boot_commands
        for command in setup:
            try:
                output, _, code = self.uboot.run(command, timeout=int(self._left()))
            except TIMEOUT:
                self._fail(f"U-Boot command '{command}' did not finish within the boot timeout")
            if code != 0:
                cause = next((line for line in output if "TFTP error" in line or "Retry count" in line), None)
                what = f"TFTP failed: {cause.strip()}" if cause else "U-Boot command failed"
                self._fail(f"{what} (exit {code} from '{command}')", infrastructure=cause is not None)
        self.console.sendline(boot)

    def _shell_prompt(self):
        prompt = prompt_left_unread(self.shell.prompt)
        patterns = [prompt] + [regex for _, regex in FAILURES] + [EOF, TIMEOUT]
        index, _, match, _ = self.console.expect(patterns, timeout=self._left())
        elapsed = time.monotonic() - self._started
        if index == 0:
            self.boot_seconds = elapsed      # the prompt itself is left for the ShellDriver
            return
        if index <= len(FAILURES):
            what, _ = FAILURES[index - 1]
            try:
                self.console.settle(0.5, timeout=3)
            except (EOF, TIMEOUT):
                pass
            self._fail(f"{what}: {match.group(0).decode(errors='replace').strip()} ({elapsed:.1f} s after power-on)")
        if patterns[index] is EOF:
            self._fail(f"the console closed {elapsed:.1f} s after power-on (board went away)", infrastructure=True)
        self._fail(f"no shell prompt within {self.boot_timeout:.0f} s of power-on ({self.shell.prompt!r} never seen)")

    def _fail(self, message, power_off=True, infrastructure=False):
        tail = self.console_log.tail(25) if self.console_log else ""
        log = self.console_log.path if self.console_log else None
        if power_off:
            try:
                self.power.off()
            except Exception:  # noqa: BLE001 - the boot error is what matters
                self.logger.warning("power off after a failed boot failed too", exc_info=True)
        self.status = Status.unknown    # a retry starts from off: power cycled, console reopened
        error = BootError(f"{message} [{self.target.name}]", console_tail=tail, log_path=log)
        error.infrastructure = infrastructure    # the lab's (power, serial, TFTP), not the board's
        raise error

    @never_retry
    @step(args=["status"])
    def force(self, status, *, step):  # pylint: disable=redefined-outer-name
        status = parse_status(Status, status)
        self.status = status
