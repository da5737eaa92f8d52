"""Progress lines for long downloads and builds, on stderr.

On a terminal one line is rewritten in place; in a CI log (not a tty) a line
is printed every 10 % so the log shows the download moving without flooding.
"""

import sys
import time


class Progress:
    def __init__(self, label, total, stream=None):
        self.label = label
        self.total = total or 0
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def update(self, nbytes):
        self.done += nbytes
        now = time.monotonic()
        if self.tty and now - self._last_draw >= 0.2:
            self._last_draw = now
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif not self.tty and self.total:
            decile = int(10 * self.done / self.total)
            if decile != self._last_decile and decile < 10:
                self._last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def finish(self):
        line = self._line(final=True)
        self.stream.write(("\r" + line + "\n") if self.tty else line + "\n")
        self.stream.flush()

    def _line(self, final=False):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed / (1 << 20)
        mib = self.done / (1 << 20)
        if final:
            return f"pkvmlab: {self.label}: {mib:.1f} MiB in {elapsed:.1f} s ({rate:.1f} MiB/s)"
        if self.total:
            pct = 100 * self.done / self.total
            return (f"pkvmlab: {self.label}: {pct:3.0f}% {mib:.1f}/{self.total / (1 << 20):.1f} MiB "
                    f"{rate:.1f} MiB/s")
        return f"pkvmlab: {self.label}: {mib:.1f} MiB {rate:.1f} MiB/s"


def note(message, stream=None):
    """One progress message (e.g. 'building initramfs') on stderr."""
    stream = stream or sys.stderr
    stream.write(f"pkvmlab: {message}\n")
    stream.flush()
