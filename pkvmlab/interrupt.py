"""SIGTERM/SIGHUP/SIGINT end a run as Ctrl-C does: a ``KeyboardInterrupt`` in the main thread, at a safe place.

``pkvmlab run`` only keeps a signal (``keep``) until pytest's session runs: ``cli.py`` raises
it before pytest starts and after it ended (``raise_if_received``), pkvmlab's pytest plugin
takes it over at configure and raises it when the session collects (``plugin/hooks.py``).
During the session the plugin's handler raises at once (``raise_interrupt``): pytest writes
its JUnit file after ``KeyboardInterrupt``, and SIGTERM's default action kills the process
with no report at all.
"""

import os
import signal
import threading

received = []      # the signals given to this module's handlers, by name, in the order they came


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
    if frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        threading.Timer(0.02, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt(f"interrupted by {name}")


def keep(signum, frame):
    """Only remember the signal: ``pkvmlab run`` before pytest's session (see ``raise_if_received``).

    Raised there, the KeyboardInterrupt was lost more than once (measured): swallowed in a
    weakref callback ("Exception ignored in ... WeakSet ... _remove"), or inside labgrid's step
    machinery, whose broken step stack then failed every test instead of ending the run.
    """
    name = signal.Signals(signum).name
    if name not in received:
        received.append(name)


taken = []         # non-empty once pkvmlab's plugin took the kept signals over (plugin/hooks.py)


def raise_if_received():
    """Raise the first kept signal as KeyboardInterrupt, unless pkvmlab's plugin has taken it over."""
    if received and not taken:
        raise KeyboardInterrupt(f"interrupted by {received[0]}")
