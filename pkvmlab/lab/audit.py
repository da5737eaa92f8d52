"""Audit log: every adb and fastboot command line sent to a device, with time stamp and exit code.

labgrid runs external programs through ``labgrid.util.helper.processwrapper``,
whose ``check_output`` is a labgrid *step* tagged ``process``; pkvmlab's ADB
driver runs adb through :func:`pkvmlab.lab.adbdriver.run_process`, a step with
the same tag.  Steps announce their start and stop to subscribers of
``labgrid.step.steps``, so subscribing there sees every such command, whoever
started it, without patching labgrid.  One line per finished command::

    2026-05-02T10:11:12.345Z  exit=0  0.041s  fastboot -s PKVMSIM0008 getvar unlocked

Commands that address no device (``adb devices -l``, ``fastboot devices``:
the listings the drivers read to check the serial) are kept too, as comment
lines (``# host-only ...``), so every line that is not a comment names its
device with ``-s``.  Lines are written and flushed as commands finish; a command
still running when the log is closed is written with ``exit=running``.
"""

import shlex
import threading
import time
from pathlib import Path

from labgrid.step import steps

DEVICE_TOOLS = ("adb", "fastboot")
# Subcommands that talk to the adb server or the USB bus, not to one device.
HOST_ONLY = ("devices", "version", "--version", "start-server", "kill-server")


def _stamp(wall):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}Z"


def host_only(command, tools=DEVICE_TOOLS):
    """True for a listing such as ``adb devices -l``: no ``-s``, and a subcommand that addresses no device."""
    for index, part in enumerate(command):
        if Path(part).name in tools:
            rest = command[index + 1:]
            return "-s" not in rest and bool(rest) and rest[0] in HOST_ONLY
    return False


def _exit_code(data):
    """exit=… text from a process step's stop event."""
    error = data.get("exception")
    if error is not None:
        code = getattr(error, "returncode", None)
        if code is not None:
            return str(code)
        return "timeout" if type(error).__name__ == "TimeoutExpired" else f"error:{type(error).__name__}"
    result = data.get("result")
    code = getattr(result, "returncode", None)
    return str(code) if code is not None else "0"   # processwrapper returns output only when the exit was 0


class AuditLog:
    """Records device commands (adb, fastboot) while open; ``records`` keeps them for inspection too."""

    def __init__(self, path, tools=DEVICE_TOOLS):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tools = tuple(tools)
        self.records = []
        self._running = {}
        self._lock = threading.Lock()
        self._file = open(self.path, "a", buffering=1)   # noqa: SIM115 - closed in close()
        self._file.write(f"# pkvmlab audit log, opened {_stamp(time.time())}: every "
                         f"{'/'.join(self.tools)} command sent to a device\n")
        steps.subscribe(self._on_event)

    def _device_command(self, step):
        if step.tag != "process" or not step.args:
            return None
        command = step.args.get("command")
        if not isinstance(command, (list, tuple)):
            return None
        command = [str(part) for part in command]
        # A command prefix (ssh to an exporter) may come first: look for the tool anywhere before its options.
        for part in command:
            if Path(part).name in self.tools:
                return command
        return None

    def _on_event(self, event):
        step = event.step
        command = self._device_command(step)
        if command is None:
            return
        state = event.data.get("state")
        with self._lock:
            if state == "start":
                self._running[id(step)] = (time.time(), command)
            elif state == "stop":
                started, command = self._running.pop(id(step), (time.time(), command))
                self._write(started, _exit_code(event.data), step.duration, command)

    def _write(self, started, code, duration, command):
        record = {"time": _stamp(started), "exit": code, "seconds": round(duration, 3),
                  "command": shlex.join(command), "host_only": host_only(command, self.tools)}
        self.records.append(record)
        if not self._file.closed:
            prefix = "# host-only " if record["host_only"] else ""
            self._file.write(f"{prefix}{record['time']}  exit={code}  {duration:.3f}s  {record['command']}\n")

    def close(self):
        with self._lock:
            if self._file.closed:
                return
            try:
                steps.unsubscribe(self._on_event)
            except AssertionError:
                pass
            for started, command in self._running.values():
                self._write(started, "running", time.time() - started, command)
            self._running.clear()
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def start_audit_log(path, tools=DEVICE_TOOLS):
    """Start recording every adb/fastboot invocation into ``path`` (appends); call ``.close()`` at the end."""
    return AuditLog(path, tools)
