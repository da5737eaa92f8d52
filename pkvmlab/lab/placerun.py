"""A run on a place: acquire it, point the run at it, and release it however the run ends.

``held_place`` wraps the run (``pkvmlab run --place NAME`` / ``--reserve k=v``):
it acquires the place (``place.acquire``: at once, or waiting up to ``--wait``),
finds the board from the place's ``board`` tag (or checks ``--board`` against
it), selects the board's place environment (``lab.env`` of the board file),
exports ``LG_PKVMLAB_PLACE``/``LG_COORDINATOR`` for it, and hands labgrid's
``RemotePlaceManager`` the session it already holds (as ``labgrid-client``
does in ``ClientSession._prepare_manager``: one gRPC session per run, not two).
Release is in a ``finally``: success, failure, Ctrl-C; SIGTERM and SIGHUP are
turned into KeyboardInterrupt for the whole span (the pytest plugin does the
same while the suites run), so they release too.  A SIGKILL cannot release:
the next run names the dead holder (``place.describe_holder``).
"""

import contextlib
import os
import signal
import time

from ..boards import load_board
from ..errors import ConfigError
from . import place as lgplace

_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def split_reserve(values, extra):
    """``--reserve`` takes key=value words; any other word after it (a suite path) goes back to pytest."""
    filters = [v for v in (values or []) if "=" in v]
    rest = [v for v in (values or []) if "=" not in v]
    return filters, rest + list(extra)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")


@contextlib.contextmanager
def held_place(args, filters=None, say=print):
    """Acquire the place ``args`` name (``place``, ``reserve``, ``wait``, ``coordinator``); yields (Held, board)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in _SIGNALS}
    held = None
    try:
        address = lgplace.coordinator_address(getattr(args, "coordinator", None))
        wanted = lgplace.parse_filters(filters) if filters else None
        started = time.monotonic()
        held = lgplace.acquire(address, place=args.place, filters=wanted, wait=float(args.wait or 0),
                               run=getattr(args, "run_id", None) or "")
        board = _board_of(held, args)
        how = f" (reservation {held.token})" if held.token else ""
        say(f"pkvmlab: acquired place {held.name}{how} on {address} in {time.monotonic() - started:.1f} s "
            f"for board {board.name}")
        os.environ["LG_PKVMLAB_PLACE"] = held.name
        os.environ["LG_COORDINATOR"] = address
        from labgrid.resource.remote import RemotePlaceManager
        manager = RemotePlaceManager.get()
        manager.session, manager.loop = held.session, held.session.loop
        lgplace.start_background(held.session)      # no 0.1 s wait per resource poll (place.start_background)
        yield held, board
    finally:
        try:
            if held is not None:
                lgplace.release(held)
                say(f"pkvmlab: released place {held.name}")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _board_of(held, args):
    """The board the place carries (its ``board`` tag); ``--board`` must agree; its file must name ``lab.env``."""
    tagged = held.board
    name = args.board or tagged
    if not name:
        raise ConfigError("--place", [f"place {held.name} has no 'board' tag: give --board"])
    board = load_board(name)
    if tagged and tagged != board.name:
        raise ConfigError("--board", [f"place {held.name} holds board {tagged}, not {board.name}"])
    if args.env is None and board.lab_env is None:
        raise ConfigError(board.path, [f"{board.path}: board {board.name} has no lab.env: it cannot run on a "
                                       "place (docs/lab.md)"])
    args.board = board.name
    if args.env is None:
        args.env = str(board.lab_env)
    return board
