"""One failure taxonomy, from where a failure arises to the JUnit file and the exit code.

Whose fault a failure is decides what a lab does next, so every failed or
errored test is filed in exactly one class, each with its JUnit ``type`` and
its exit code.  pytest's own codes keep their meaning (0 passed, 1 tests failed,
2 interrupted or usage error, 3 internal error, 4 usage, 5 nothing collected):
a board finding is a failed test, so it stays 1; the other classes get 10-14,
which neither pytest nor ``timeout(1)`` (124-137) uses:

==============  ========================  ====  ===============================================
class           JUnit type                exit  meaning
==============  ========================  ====  ===============================================
configuration   pkvmlab.configuration     10    a file or option the user wrote is wrong
infrastructure  pkvmlab.infrastructure    11    the lab failed: QEMU died, a download, a device
board           pkvmlab.board             1     the board misbehaves: panic, hang, wrong EL, leak
harness         pkvmlab.harness           13    a bug in pkvmlab or a suite (unexpected exception)
interrupted     pkvmlab.interrupted       14    SIGTERM/SIGINT/SIGHUP ended the run
==============  ========================  ====  ===============================================

The JUnit ``message`` is the first cause on one line ("kernel panic: ...",
"QEMU exited at start: ...").  labgrid's ``never_retry`` wraps the first error
of a strategy in ``StrategyError("... is in broken state")`` on every later
call; :func:`first_cause` walks back to the original, so no report says that.
"""

import dataclasses
import re

from labgrid.strategy.common import StrategyError
from pexpect import EOF

from .errors import BootError, ConfigError, ImageError, InfrastructureError


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    exit_code: int
    rank: int          # when several classes occur in a run, the highest rank decides the exit code

    @property
    def junit_type(self):
        return f"pkvmlab.{self.name}"


BOARD = Kind("board", 1, 1)
HARNESS = Kind("harness", 13, 2)
INFRASTRUCTURE = Kind("infrastructure", 11, 3)
CONFIGURATION = Kind("configuration", 10, 4)
INTERRUPTED = Kind("interrupted", 14, 5)
KINDS = (CONFIGURATION, INFRASTRUCTURE, BOARD, HARNESS, INTERRUPTED)

PANIC = re.compile(r"(Kernel panic - not syncing[^\r\n]*|HYP panic[^\r\n]*)")


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: Kind
    message: str     # one line, the first cause
    junit_type: str = None   # the JUnit type when not the class's own (a strict-mode waived finding)

    @property
    def type(self):
        return self.junit_type or self.kind.junit_type


def first_cause(exc):
    """The exception that started it: through labgrid's StrategyError wrapping to the original.

    An error raised while a KeyboardInterrupt unwound is the interrupt's doing, and the
    interrupt is the first cause: a SIGTERM raised inside labgrid's step machinery cuts its
    step stack in half, labgrid then fails its own ``assert self._stack[-1] is step`` and
    ``never_retry`` keeps that AssertionError (measured in CI: an interrupted boot filed as the
    board's "assertion failed").
    """
    seen = set()
    while isinstance(exc, StrategyError) and exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    context = exc
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return context
        seen.add(id(context))
        context = context.__context__
    return exc


def _one_line(text, limit=300):
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def panic_line(console_text):
    """The last panic line the board printed, or None."""
    found = PANIC.findall(console_text or "")
    return found[-1].strip() if found else None


def classify(exc, console_text=None, qemu_exit=None):
    """The Outcome of a test that raised ``exc``.

    ``console_text`` is what the board printed (the run's console log): a
    console that closed after a panic is the panic's fault, not the lab's.
    ``qemu_exit`` is QEMU's exit status when known.
    """
    exc = first_cause(exc)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome(INTERRUPTED, _one_line(exc) or "interrupted")
    if isinstance(exc, ConfigError):
        return Outcome(CONFIGURATION, _one_line(exc))
    if isinstance(exc, BootError):
        kind = INFRASTRUCTURE if getattr(exc, "infrastructure", False) else BOARD
        return Outcome(kind, _one_line(exc))
    if isinstance(exc, (InfrastructureError, ImageError)):
        return Outcome(INFRASTRUCTURE, _one_line(exc))
    if isinstance(exc, (EOF, BrokenPipeError, ConnectionError)) or "EOF" in type(exc).__name__:
        panic = panic_line(console_text)
        if panic:
            return Outcome(BOARD, f"kernel panic: {panic}")
        code = f" (exit code {qemu_exit})" if qemu_exit is not None else ""
        return Outcome(INFRASTRUCTURE, f"the board's console closed mid-test{code}: {_one_line(exc)}")
    if isinstance(exc, AssertionError):
        panic = panic_line(console_text)
        return Outcome(BOARD, f"kernel panic: {panic}" if panic else (_one_line(exc) or "assertion failed"))
    if type(exc).__module__.startswith(("requests", "urllib3")) and isinstance(exc, OSError):
        # a PDU, serial server or coordinator that does not answer (requests raises OSErrors without errno)
        return Outcome(INFRASTRUCTURE, f"{type(exc).__name__}: {_one_line(exc)}")
    if isinstance(exc, OSError) and exc.errno is not None:
        return Outcome(INFRASTRUCTURE, f"{type(exc).__name__}: {_one_line(exc)}")
    if type(exc).__name__ == "ExecutionError":   # a board command failed: the board's answer
        panic = panic_line(console_text)
        return Outcome(BOARD, f"kernel panic: {panic}" if panic else f"board command failed: {_one_line(exc)}")
    return Outcome(HARNESS, f"{type(exc).__name__}: {_one_line(exc)}")


def exit_code(kinds):
    """The run's exit code for the classes that occurred (None: leave pytest's)."""
    kinds = [k for k in kinds if k is not None]
    return max(kinds, key=lambda k: k.rank).exit_code if kinds else None


def run_exit_code(codes):
    """One exit code for several runs (matrix cells): the highest-ranked class among them.

    ``None`` stands for a run that wrote no report (infrastructure); a code that is
    none of the classes' (pytest's 2-5, a signal) counts as a harness failure.
    """
    by_code = {kind.exit_code: kind for kind in KINDS}
    kinds = []
    for code in codes:
        if code == 0:
            continue
        kinds.append(INFRASTRUCTURE if code is None else by_code.get(code, HARNESS))
    return exit_code(kinds) or 0
