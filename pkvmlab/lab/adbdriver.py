"""AdbDriver: commands and files over ``adb -s SERIAL`` (labgrid has no adb driver).

``run(cmd)`` is labgrid's CommandProtocol (stdout lines, stderr lines, exit
code: adb's shell protocol passes the remote exit code and keeps stdout and
stderr apart), ``put``/``get`` are FileTransferProtocol (``adb push``/``pull``).
Every adb call names the device with ``-s`` and has a deadline.  Activation
refuses an environment without a serial and a serial that two attached devices
answer to (``adb devices -l``).

Every adb command goes through :func:`run_process`, a labgrid step tagged
``process`` like labgrid's own ``processwrapper.check_output``, so the audit log
(:mod:`pkvmlab.lab.audit`) and labgrid's step logging see it.  We do not use
``processwrapper`` itself: it merges stderr into stdout and has no timeout.

Config:
    timeout (float): default deadline of one adb command, seconds (default 30)
    poll_interval (float): seconds between polls while waiting for a device or its boot (default 1)
"""

import logging
import re
import selectors
import subprocess
import time
from dataclasses import dataclass, field

import attr
from labgrid.driver.commandmixin import CommandMixin
from labgrid.driver.common import Driver
from labgrid.driver.exception import ExecutionError
from labgrid.factory import target_factory
from labgrid.protocol import CommandProtocol, FileTransferProtocol
from labgrid.step import step

from ..errors import BootError, DeviceError
from .androidresource import check_serial, describe

# adb's own complaints (not the remote command's): the device is not reachable.
_ADB_LOST = re.compile(r"^(adb: )?(error: )?(device '.*' not found|no devices/emulators found|device offline|"
                       r"device unauthorized|device still authorizing|more than one device|closed|"
                       r"protocol fault)")


@dataclass
class ProcessResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    lines: list = field(default_factory=list)   # (seconds since start, "stdout"|"stderr", text) when timed


@step(title="process", args=["command"], result=True, tag="process")
def run_process(command, timeout, timed=False, watch=None):
    """Run ``command`` (argv list) with a deadline; a labgrid step tagged 'process' (audited).

    Raises subprocess.TimeoutExpired (after killing it) when the deadline passes.
    With ``timed``, each output line is kept with the time it arrived, and ``watch``
    (if given) is called with ``(seconds, stream, text)`` for each line as it
    arrives and with ``(seconds, None, None)`` at least every 0.5 s: it may act on
    the device meanwhile (e.g. stop a VM that would otherwise run forever).
    """
    logging.getLogger("Process").info("command: %s", " ".join(command))
    if not timed:
        done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        return ProcessResult(done.returncode, done.stdout, done.stderr)
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    chunks = {"stdout": b"", "stderr": b""}
    pending = {"stdout": b"", "stderr": b""}
    lines = []
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
        selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
        open_streams = 2
        while open_streams:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(command, timeout, chunks["stdout"], chunks["stderr"])
            fresh = []
            for key, _ in selector.select(min(left, 0.5)):
                data = key.fileobj.read1(65536)
                name = key.data
                if not data:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                    if pending[name]:
                        fresh.append((time.monotonic() - started, name, pending[name].decode(errors="replace")))
                    continue
                chunks[name] += data
                *complete, pending[name] = (pending[name] + data).split(b"\n")
                now = time.monotonic() - started
                fresh.extend((now, name, line.decode(errors="replace").rstrip("\r")) for line in complete)
            lines.extend(fresh)
            if watch is not None:
                for line in fresh:
                    watch(*line)
                watch(time.monotonic() - started, None, None)
    try:
        proc.wait(timeout=max(0.1, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return ProcessResult(proc.returncode, chunks["stdout"], chunks["stderr"], lines)


def parse_adb_devices(text):
    """[(serial, state, description)] from ``adb devices -l``."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) >= 2:
            devices.append((parts[0], parts[1], " ".join(parts[2:])))
    return devices


@target_factory.reg_driver
@attr.s(eq=False)
class AdbDriver(CommandMixin, Driver, CommandProtocol, FileTransferProtocol):
    bindings = {"device": "AndroidDevice"}

    timeout = attr.ib(default=30.0, converter=float)
    poll_interval = attr.ib(default=1.0, converter=float)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.tool = self.target.env.config.get_tool("adb") if self.target.env else "adb"

    @property
    def serial(self):
        return self.device.serial

    def _config_file(self):
        env = self.target.env
        return getattr(env, "config_file", None) if env else None

    def on_activate(self):
        self.check_attached()

    def on_deactivate(self):
        pass

    # -- commands that do not need the device (listings, waiting) ------------------------------------------

    def adb(self, *args, timeout=None, timed=False, watch=None):
        """``adb -s SERIAL args...``; returns ProcessResult.  Raises DeviceError if adb itself fails to run."""
        if not self.serial:
            check_serial(self.device, self.devices_described(), "adb", self._config_file())
        command = [self.tool, "-s", self.serial, *args]
        try:
            return run_process(command, timeout=self.timeout if timeout is None else timeout, timed=timed,
                               watch=watch)
        except FileNotFoundError:
            raise DeviceError(f"adb not found ({self.tool}): install Android platform-tools or set "
                              "tools: adb in the environment") from None

    def devices(self):
        """``adb devices -l`` as [(serial, state, description)]: every device adb sees (no -s: a listing)."""
        try:
            result = run_process([self.tool, "devices", "-l"], timeout=self.timeout)
        except FileNotFoundError:
            raise DeviceError(f"adb not found ({self.tool}): install Android platform-tools or set "
                              "tools: adb in the environment") from None
        if result.returncode != 0:
            raise DeviceError(f"adb devices -l failed (exit {result.returncode}): "
                              f"{result.stderr.decode(errors='replace').strip()}")
        return parse_adb_devices(result.stdout.decode(errors="replace"))

    def devices_described(self):
        return [(serial, f"{state} {info}".strip()) for serial, state, info in self.devices()]

    def present(self):
        """True when adb sees this device ready ('device' state); refuses a missing or ambiguous serial."""
        listing = self.devices()
        check_serial(self.device, [(s, f"{st} {i}".strip()) for s, st, i in listing], "adb", self._config_file())
        return any(serial == self.serial and state == "device" for serial, state, _ in listing)

    def check_attached(self):
        if not self.present():
            raise DeviceError(f"{self.serial} is not attached as a ready adb device (adb devices -l: "
                              f"{describe(self.devices_described())})")

    def wait_for_device(self, timeout):
        """Wait (bounded) until adb sees the device; ``host:port`` serials are connected first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.present():
                return
            if ":" in self.serial:
                run_process([self.tool, "connect", self.serial], timeout=min(self.timeout, 10))
            if time.monotonic() >= deadline:
                raise BootError(f"{self.serial} did not appear in 'adb devices' within {timeout:.0f} s "
                                f"(adb sees: {describe(self.devices_described())})")
            time.sleep(self.poll_interval)

    # -- CommandProtocol -------------------------------------------------------------------------------

    def _raise_if_lost(self, result):
        first = result.stderr.decode(errors="replace").strip().splitlines()[:1]
        if result.returncode != 0 and first and _ADB_LOST.match(first[0]):
            raise DeviceError(f"adb lost {self.serial}: {first[0]}")

    def _run(self, cmd, *, timeout=30.0, codec="utf-8", decodeerrors="strict"):
        try:
            result = self.adb("shell", cmd, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ExecutionError(f"adb -s {self.serial} shell {cmd!r} did not finish within {timeout} s",
                                 (err.stdout or b"").decode(codec, decodeerrors).splitlines(),
                                 (err.stderr or b"").decode(codec, decodeerrors).splitlines()) from None
        self._raise_if_lost(result)
        return (result.stdout.decode(codec, decodeerrors).splitlines(),
                result.stderr.decode(codec, decodeerrors).splitlines(), result.returncode)

    @Driver.check_active
    @step(args=["cmd"], result=True)
    def run(self, cmd, *, timeout=30.0, codec="utf-8", decodeerrors="strict"):
        """Run ``cmd`` in the device's shell: (stdout lines, stderr lines, exit code)."""
        return self._run(cmd, timeout=timeout, codec=codec, decodeerrors=decodeerrors)

    @Driver.check_active
    @step(args=["cmd"])
    def run_timed(self, cmd, *, timeout=120.0, watch=None):
        """Run ``cmd``, keeping when each output line arrived: ([(seconds, stream, text)], exit code).

        For measuring (e.g. how long a VM takes to say its payload is ready); a deadline kills it.
        ``watch(seconds, stream, text)`` sees each line as it arrives (and ``(seconds, None, None)``
        at least every 0.5 s), and may run other commands on the device meanwhile.
        """
        try:
            result = self.adb("shell", cmd, timeout=timeout, timed=True, watch=watch)
        except subprocess.TimeoutExpired as err:
            raise ExecutionError(f"adb -s {self.serial} shell {cmd!r} did not finish within {timeout} s",
                                 (err.stdout or b"").decode(errors="replace").splitlines(),
                                 (err.stderr or b"").decode(errors="replace").splitlines()) from None
        self._raise_if_lost(result)
        return result.lines, result.returncode

    def get_status(self):
        return 1 if self.present() else 0

    # -- FileTransferProtocol ---------------------------------------------------------------------------

    def _transfer(self, *args):
        result = self.adb(*args, timeout=max(self.timeout, 300))
        self._raise_if_lost(result)
        if result.returncode != 0:
            raise ExecutionError(f"adb {' '.join(args)} failed (exit {result.returncode})",
                                 result.stdout.decode(errors="replace").splitlines(),
                                 result.stderr.decode(errors="replace").splitlines())

    @Driver.check_active
    @step(args=["filename", "remotepath"])
    def put(self, filename, remotepath):
        self._transfer("push", str(filename), str(remotepath))

    @Driver.check_active
    @step(args=["filename", "destination"])
    def get(self, filename, destination):
        self._transfer("pull", str(filename), str(destination))

    # -- Android specifics -------------------------------------------------------------------------------

    @Driver.check_active
    @step(args=["name"], result=True)
    def getprop(self, name):
        lines, _, _ = self._run(f"getprop {name}", timeout=self.timeout)
        return lines[0].strip() if lines else ""

    @Driver.check_active
    @step(title="root")
    def root(self):
        """``adb root`` (userdebug/eng builds), then check the shell is uid 0."""
        result = self.adb("root")
        self._raise_if_lost(result)
        said = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0 or "cannot run as root" in said:
            raise DeviceError(f"{self.serial}: adb root refused: {said!r}; the root state needs a userdebug or eng "
                              "build (ro.debuggable=1)")
        if "already running as root" not in said:
            self.wait_for_device(self.timeout)   # adbd restarts
        uid, _, _ = self._run("id -u", timeout=self.timeout)
        if uid[:1] != ["0"]:
            raise DeviceError(f"{self.serial}: after adb root the shell is uid {uid[:1]}, not 0")

    @Driver.check_active
    @step(args=["target"])
    def reboot(self, target=None):
        """``adb reboot [bootloader]``; the device leaves adb."""
        result = self.adb("reboot", *([target] if target else []))
        self._raise_if_lost(result)
        if result.returncode != 0:
            raise DeviceError(f"{self.serial}: adb reboot {target or ''} failed: "
                              f"{result.stderr.decode(errors='replace').strip()}")

    @Driver.check_active
    @step(args=["timeout"])
    def wait_for_boot(self, timeout):
        """Wait until ``sys.boot_completed`` is 1; BootError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        value = ""
        while True:
            value = self.getprop("sys.boot_completed")
            if value == "1":
                return
            if time.monotonic() >= deadline:
                raise BootError(f"{self.serial} did not complete boot within {timeout:.0f} s "
                                f"(sys.boot_completed is {value!r}, never '1')")
            time.sleep(self.poll_interval)

    @Driver.check_active
    @step(args=["filename"])
    def install(self, filename):
        """``adb install FILE`` (an APK, or an APEX staged for the next boot)."""
        result = self.adb("install", str(filename), timeout=max(self.timeout, 300))
        self._raise_if_lost(result)
        said = (result.stdout + result.stderr).decode(errors="replace").strip()
        if result.returncode != 0 or "Success" not in said:
            raise DeviceError(f"{self.serial}: adb install {filename} failed: {said}")
        return said
