"""Keep everything a board printed: one console log file per board, written as it arrives.

labgrid reports every console read as a step event (tag ``console``); we
subscribe, like labgrid's own ConsoleLoggingReporter, but for one console
driver and one file chosen by the run, unbuffered so that a crash or SIGKILL
loses nothing that was read.  A bounded tail stays in memory for error messages.
"""

from labgrid.step import steps

ATTEMPT_MARK = b"\n=== pkvmlab: boot attempt "    # where a retried boot starts in the log


class ConsoleLog:
    def __init__(self, console, path, tail_bytes=64 * 1024):
        self.console = console
        self.path = path
        self._file = open(path, "ab", buffering=0)
        self._tail = bytearray()
        self._tail_bytes = tail_bytes
        self.write_error = None      # the OSError that stopped the file (disk full), if any
        steps.subscribe(self._notify)

    def _notify(self, event):
        step = event.step
        if (step.tag == "console" and step.title == "read" and step.source is self.console
                and event.data.get("state") == "stop" and step.result):
            self.write(step.result)

    def write(self, data):
        self._tail += data
        if len(self._tail) > 2 * self._tail_bytes:
            del self._tail[:-self._tail_bytes]
        if self._file.closed or self.write_error is not None:
            return
        try:
            self._file.write(data)
        except OSError as err:   # a full disk: keep the tail in memory; the run reports the error once
            self.write_error = err

    def text(self):
        """Everything logged so far (read back from the file)."""
        with open(self.path, "rb") as file:
            return file.read().decode("utf-8", errors="replace")

    def mark_attempt(self, number):
        """Mark where boot attempt ``number`` (a retry) starts."""
        self.write(ATTEMPT_MARK + f"{number} ===\n".encode())

    def text_of_last_boot(self):
        """What the board printed since its last boot attempt started (all of it, if it booted once)."""
        with open(self.path, "rb") as file:
            return file.read().rsplit(ATTEMPT_MARK, 1)[-1].decode("utf-8", errors="replace")

    def tail(self, lines=30):
        text = self._tail.decode("utf-8", errors="replace")
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def close(self):
        steps.unsubscribe(self._notify)
        self._file.close()
