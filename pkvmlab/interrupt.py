"""SIGTERM/SIGHUP (and SIGINT) as Ctrl-C: a ``KeyboardInterrupt`` in the main thread, never inside an import.

Used by ``pkvmlab run`` from its start (``cli.py``) and by the pytest plugin once it has
the run (``plugin/hooks.py``): pytest writes its JUnit file after ``KeyboardInterrupt``,
and the default action of SIGTERM kills the process with no report at all.
"""

import contextlib
import os
import signal
import threading

received = []      # the signals raise_interrupt was given, by name, in the order they came
_held = []         # while non-empty (``held()``), a signal is kept instead of raised


def raise_interrupt(signum, frame):
    """Raise ``KeyboardInterrupt`` wherever the main thread is, except inside importlib's own code.

    Raised there it leaves a module lock held, and the next import of that module waits for
    it forever (measured in CI: a SIGTERM landed in an import of ``sqlite3`` while the report's
    warm-up thread imported it too; the run then hung in its report step), or it is swallowed
    ("Exception ignored in ... _get_module_lock.<locals>.cb": measured, a SIGTERM'd run that went
    on to the end).  There the signal is sent again 20 ms later, once the import is done.
    """
    name = signal.Signals(signum).name
    if name not in received:
        received.append(name)
    if _held:
        return
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        threading.Timer(0.02, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt(f"interrupted by {name}")


@contextlib.contextmanager
def held():
    """Signals that come inside are raised when it ends, as ``KeyboardInterrupt``.

    For the power-on before pytest starts (``earlyboot.py``): raised inside labgrid's step
    machinery, the exception cut its step stack in half ("assert self._stack[-1] is step"),
    labgrid's ``never_retry`` kept that AssertionError as the strategy's error, and the run
    went on to fail every test with it instead of ending as interrupted (measured: a SIGTERM
    a few milliseconds after QEMU started).
    """
    _held.append(True)
    try:
        yield
    finally:
        _held.pop()
    if received and not _held:
        raise KeyboardInterrupt(f"interrupted by {received[0]}")
