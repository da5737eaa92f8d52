"""Places on labgrid's coordinator: find, reserve, acquire and always release the board a run uses.

labgrid's client does the work: ``start_session`` opens the gRPC session, and
``ClientSession``'s own ``add_place``/``add_match``/``set_tags``/``acquire``/
``release`` make the changes (they print what labgrid-client prints; that goes to
the log here).  What is ours, and why:

* **a held place fails at once, naming the holder.**  ``acquire`` is tried once;
  the one-line error says who holds it (``place qemu-uboot-1 is acquired by
  host/user``) and, when the holder is a pkvmlab run on this host, its pid and
  whether it still runs: a run killed with SIGKILL cannot release, and labgrid
  never expires an acquired place, so the next run says so and names the fix
  (``pkvmlab lab release NAME``).  A record per held place (pid and start time,
  under the cache directory) is how a dead holder is told from a live one.
* **a bounded wait.**  ``labgrid-client reserve --wait`` polls without a
  deadline; here the reservation is polled through labgrid's own gRPC stub
  (``PollReservation``, which also refreshes it) until a place is allocated or
  ``wait`` seconds pass, and a reservation that was not served is cancelled.
* **the board is switched off on release**, through the place's own
  ``NetworkPowerPort`` and labgrid's power backend, so a failed or interrupted
  run does not leave its board (a QEMU on the exporter host) running.

Place tags carry the board's facts (``board_tags``), so ``--reserve soc=...`` or
``--reserve el2=gunyah`` finds a board by what it is.
"""

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field

from ..errors import ConfigError, InfrastructureError

logger = logging.getLogger("pkvmlab.lab.place")

DEFAULT_COORDINATOR = "127.0.0.1:20408"   # labgrid's default (labgrid-client --help)


class CoordinatorError(InfrastructureError):
    """The coordinator does not answer, or refused a request: the lab's fault."""


class PlaceBusy(InfrastructureError):
    """The place (or every place matching a reservation) is held by someone else."""


def _slug(text):
    return re.sub(r"[^a-z0-9_.-]+", "_", str(text).lower()).strip("_")


def board_tags(board):
    """The place tags a board's facts give: board, soc, boot EL, KVM mode, who holds EL2, firmware, image
    delivery (plus the board file's own ``lab.tags``)."""
    expect = board.expect
    if expect.el2_holder:
        el2 = "none" if expect.el2_holder == "none" else _slug(expect.el2_holder)
    elif expect.boot_el == "EL2":
        el2 = "linux-kvm" if expect.kvm_mode != "none" else "linux"
    else:
        el2 = "unknown"
    tags = {"board": board.name, "soc": _slug(board.soc.split("(")[0]), "boot_el": expect.boot_el.lower(),
            "kvm": expect.kvm_mode, "el2": el2, "pvm": "yes" if expect.pvm else "no"}
    for fact in ("firmware", "delivery"):         # board-file facts (pkvmlab/boards.py), where the file has them
        if getattr(board, fact, None):
            tags[fact] = str(getattr(board, fact))
    tags.update(dict(getattr(board, "lab_tags", ()) or ()))
    return tags


def parse_filters(pairs, where="--reserve"):
    """['board=qemu-uboot', ...] -> {'board': 'qemu-uboot'}; ConfigError naming a bad one."""
    from labgrid.remote.common import TAG_KEY
    filters, problems = {}, []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            problems.append(f"{where}: '{pair}' is not key=value")
        elif not TAG_KEY.fullmatch(key):
            problems.append(f"{where}: tag key '{key}' must match {TAG_KEY.pattern} (labgrid's rule)")
        else:
            filters[key] = value
    if problems:
        raise ConfigError(where, problems)
    return filters


def coordinator_address(explicit=None, lab_dir=None):
    """``--coordinator``, else ``LG_COORDINATOR``, else the running one-machine lab's, else labgrid's default."""
    if explicit:
        return explicit
    if os.environ.get("LG_COORDINATOR"):
        return os.environ["LG_COORDINATOR"]
    from .labservice import running_lab
    lab = running_lab(lab_dir)
    return lab["coordinator"] if lab else DEFAULT_COORDINATOR


# ---- the session --------------------------------------------------------------------------------

def connect(address):
    """A labgrid ``ClientSession`` on ``address`` (labgrid's ``start_session``)."""
    from labgrid.remote.client import Error, start_session
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return start_session(address)
    except (Error, OSError) as err:
        raise CoordinatorError(f"coordinator {address} does not answer: {err} "
                               f"(start one with `pkvmlab lab up`, or set LG_COORDINATOR)") from None


def close(session):
    stop_background(session)
    with contextlib.suppress(Exception):
        session.loop.run_until_complete(session.stop())
        session.loop.run_until_complete(session.close())


def on_loop(session, awaitable, timeout=60):
    """Run a coroutine of the session: on its loop's thread when that runs in the background, else here."""
    thread = getattr(session, "_pkvmlab_loop_thread", None)
    if thread is not None and thread.is_alive():
        async def wait():
            return await awaitable
        return asyncio.run_coroutine_threadsafe(wait(), session.loop).result(timeout)
    return session.loop.run_until_complete(awaitable)


def start_background(session):
    """Run the session's event loop in a thread of its own for the rest of the run.

    labgrid's ``RemotePlaceManager.poll`` runs the loop for 0.1 s on every poll when
    nobody else runs it (``if not self.loop.is_running()``), and ``Target`` polls
    twice per driver activation: measured 0.84 s for the strategy's power-off alone
    against 0.02 s locally.  With the loop running (as inside ``labgrid-client``'s own
    commands) the coordinator's updates arrive as they come and no poll waits.
    """
    import threading
    if getattr(session, "_pkvmlab_loop_thread", None) is not None:
        return
    thread = threading.Thread(target=session.loop.run_forever, name="labgrid-session", daemon=True)
    session._pkvmlab_loop_thread = thread
    thread.start()


def stop_background(session):
    thread = getattr(session, "_pkvmlab_loop_thread", None)
    if thread is None:
        return
    session.loop.call_soon_threadsafe(session.loop.stop)
    thread.join(10)
    session._pkvmlab_loop_thread = None


def _call(session, method, **args):
    """Run one of labgrid's ClientSession commands with its argparse arguments; its prints go to the log."""
    from labgrid.remote.client import Error
    session.args = argparse.Namespace(**args)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            return on_loop(session, getattr(session, method)())
    except Error as err:
        raise CoordinatorError(f"{method.replace('_', ' ')}: {err}") from None
    finally:
        for line in out.getvalue().splitlines():
            logger.info("labgrid: %s", line)


def _pump(session, seconds=0.0):
    """Let the session receive the coordinator's updates."""
    if getattr(session, "_pkvmlab_loop_thread", None) is not None:
        time.sleep(seconds)
        return
    session.loop.run_until_complete(asyncio.sleep(seconds))


def ensure_place(session, name, match, tags, comment=""):
    """Place ``name`` (created if missing) matching ``match``, with ``tags``: labgrid's create/add-match/set-tags."""
    if name not in session.places:
        _call(session, "add_place", place=name)
    place = session.places[name]
    if not place.hasmatch(match.split("/")):
        _call(session, "add_match", place=name, patterns=[match])
    if dict(place.tags) != tags:
        _call(session, "set_tags", place=name, tags=[f"{k}={v}" for k, v in tags.items()])
    if comment and place.comment != comment:
        _call(session, "set_comment", place=name, comment=[comment])


# ---- who holds a place --------------------------------------------------------------------------

def _records_dir(address):
    from ..images.cache import default_cache_dir
    return default_cache_dir() / "lab-held" / _slug(address)


def _record_path(address, place):
    return _records_dir(address) / f"{_slug(place)}.json"


def write_record(address, place, run=""):
    from ..childproc import _start_time
    path = _record_path(address, place)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()), "run": run,
                                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


def read_record(address, place):
    try:
        return json.loads(_record_path(address, place).read_text())
    except (OSError, ValueError):
        return None


def drop_record(address, place):
    with contextlib.suppress(OSError):
        _record_path(address, place).unlink()
        _records_dir(address).rmdir()        # only when it is empty


def holder_alive(record):
    """True/False for a pkvmlab process recorded on this host (pid and start time), None if unknown."""
    if not record:
        return None
    from ..childproc import _start_time
    return _start_time(record["pid"]) == record.get("start")


def me(session):
    return f"{session.gethostname()}/{session.getuser()}"


def describe_holder(session, address, place, hint=True):
    """'host/user' and, for a pkvmlab run of this host, which one and whether it still runs."""
    who = place.acquired
    record = read_record(address, place.name) if who == me(session) else None
    alive = holder_alive(record)
    if alive is None:
        return who
    what = f"pkvmlab pid {record['pid']}" + (f", run {record['run']}" if record.get("run") else "")
    if alive:
        return f"{who} ({what}, running since {record['since']})"
    fix = f": release it with `pkvmlab lab release {place.name}`" if hint else ""
    return f"{who}, left acquired by {what}, which is gone (killed?){fix}"


def stale(session, address, place):
    """Whether ``place`` is held by a pkvmlab process of this host that no longer runs."""
    return bool(place.acquired) and place.acquired == me(session) and \
        holder_alive(read_record(address, place.name)) is False


# ---- acquire and release ------------------------------------------------------------------------

@dataclass
class Held:
    """A place this process acquired (through a reservation when ``token`` is set)."""

    address: str
    name: str
    tags: dict
    session: object = None
    token: str = None
    waited: float = 0.0
    resources: dict = field(default_factory=dict)

    @property
    def board(self):
        return self.tags.get("board")


def matching_places(session, filters):
    """Places whose tags (and name) carry every key=value of ``filters``."""
    found = []
    for name, place in sorted(session.places.items()):
        tags = dict(place.tags, name=name)
        if all(tags.get(k) == v for k, v in filters.items()):
            found.append(place)
    return found


def _describe_places(session):
    return "; ".join(f"{name} [{' '.join(f'{k}={v}' for k, v in sorted(p.tags.items()))}]"
                     for name, p in sorted(session.places.items())) or "none"


def acquire(address, place=None, filters=None, wait=0.0, run=""):
    """Acquire ``place`` (or a place matching ``filters`` through a labgrid reservation); a Held, or raise.

    ``wait``: seconds to wait for a held place (or an unserved reservation) before giving up.
    """
    session = connect(address)
    try:
        started = time.monotonic()
        if filters:
            held = _acquire_reserved(session, address, filters, wait, started, run)
        else:
            held = _acquire_named(session, address, place, wait, started, run)
        held.waited = time.monotonic() - started
        held.session = session
        return held
    except BaseException:
        close(session)
        raise


def _acquire_named(session, address, name, wait, started, run):
    from labgrid.remote.client import Error
    if name not in session.places:
        raise ConfigError("--place", [f"unknown place '{name}' on coordinator {address}. Available: "
                                      f"{', '.join(sorted(session.places)) or 'none'}"])
    while True:
        place = session.places[name]
        if not place.acquired:
            try:
                _acquire_place(session, name)
                write_record(address, name, run)
                return Held(address, name, dict(place.tags))
            except (Error, CoordinatorError) as err:
                if time.monotonic() - started >= wait or session.places[name].acquired is None:
                    raise CoordinatorError(f"place {name} could not be acquired: {err}") from None
        elif time.monotonic() - started >= wait:
            waited = f" (waited {wait:.0f} s)" if wait else ""
            raise PlaceBusy(f"place {name} is acquired by {describe_holder(session, address, place)}{waited}")
        _pump(session, 0.5)


def _acquire_place(session, name):
    """labgrid's own acquire: checks the place's matches against the exporters' resources first."""
    _call(session, "acquire", place=name, allow_unmatched=False)


def _acquire_reserved(session, address, filters, wait, started, run):
    from labgrid.remote.common import Reservation, ReservationState
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
    if not matching_places(session, filters):
        wanted = " ".join(f"{k}={v}" for k, v in filters.items())
        raise ConfigError("--reserve", [f"no place on coordinator {address} has tags {wanted}. "
                                        f"Places: {_describe_places(session)}"])
    request = pb2.CreateReservationRequest(
        filters={"main": pb2.Reservation.Filter(filter=filters)}, prio=0.0)
    response = on_loop(session, session.stub.CreateReservation(request))
    token = Reservation.from_pb2(response.reservation).token
    try:
        while True:
            polled = on_loop(session, session.stub.PollReservation(pb2.PollReservationRequest(token=token)))
            reservation = Reservation.from_pb2(polled.reservation)
            if reservation.state is ReservationState.allocated:
                name = reservation.allocations["main"][0]
                _pump(session)
                _acquire_place(session, name)      # the coordinator lets only the reservation's owner in
                write_record(address, name, run)
                return Held(address, name, dict(session.places[name].tags), token=token)
            if reservation.state is not ReservationState.waiting:
                raise CoordinatorError(f"reservation {token} for {filters} is {reservation.state.name}")
            if time.monotonic() - started >= wait:
                _pump(session)
                held = [f"{p.name} by {describe_holder(session, address, p)}"
                        for p in matching_places(session, filters) if p.acquired]
                waited = f" within {wait:.0f} s" if wait else ""
                wanted = " ".join(f"{k}={v}" for k, v in filters.items())
                raise PlaceBusy(f"no place with {wanted} is free{waited}: " +
                                ("; ".join(f"{h} acquired" for h in held) or "all reserved by others"))
            time.sleep(min(0.5, max(0.05, wait - (time.monotonic() - started))))
    except BaseException:
        cancel_reservation(session, token)
        raise


def cancel_reservation(session, token):
    from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
    with contextlib.suppress(Exception):
        on_loop(session, session.stub.CancelReservation(pb2.CancelReservationRequest(token=token)))


def power_off(session, name):
    """Switch the place's board off through its NetworkPowerPort with labgrid's power backend; True if done."""
    from importlib import import_module
    place = session.places.get(name)
    if place is None or not place.acquired:
        return False
    try:
        resources = session.get_target_resources(place)
    except Exception:  # noqa: BLE001 - an exporter gone: nothing to switch
        return False
    for (_, cls), entry in resources.items():
        if cls != "NetworkPowerPort":
            continue
        args = entry.args
        try:
            backend = import_module(f"labgrid.driver.power.{args['model']}")
            backend.power_set(args["host"], args.get("port"), args.get("index"), False)
            return True
        except Exception as err:  # noqa: BLE001 - the release matters more than the power-off
            logger.warning("power off of place %s failed: %s", name, err)
    return False


def release(held, power=True):
    """Power the board off, release the place, cancel the reservation, close the session. Never raises."""
    session = held.session
    try:
        if power:
            power_off(session, held.name)
        with contextlib.suppress(CoordinatorError):
            _call(session, "release", place=held.name, kick=False)
        if held.token:
            cancel_reservation(session, held.token)
    finally:
        drop_record(held.address, held.name)
        close(session)


def release_place(address, name, force=False):
    """``pkvmlab lab release``: release a place left acquired; refuses one a live pkvmlab run holds."""
    session = connect(address)
    try:
        if name not in session.places:
            raise ConfigError(name, [f"unknown place '{name}' on coordinator {address}. Available: "
                                     f"{', '.join(sorted(session.places)) or 'none'}"])
        place = session.places[name]
        if not place.acquired:
            return f"place {name} is not acquired"
        who = describe_holder(session, address, place, hint=False)
        record = read_record(address, name)
        if place.acquired == me(session) and holder_alive(record) and not force:
            raise PlaceBusy(f"place {name} is held by a running pkvmlab process: {who}; stop it, or --force")
        if place.acquired != me(session) and not force:
            raise PlaceBusy(f"place {name} is acquired by {who}, not by {me(session)}; --force to take it away")
        power_off(session, name)
        _call(session, "release", place=name, kick=True)
        drop_record(address, name)
        return f"released place {name} (was acquired by {who})"
    finally:
        close(session)


def places_status(address):
    """[{name, tags, acquired, holder, stale, reservation}] of every place on the coordinator."""
    session = connect(address)
    try:
        _pump(session, 0.1)
        rows = []
        for name, place in sorted(session.places.items()):
            rows.append({"name": name, "tags": dict(place.tags), "acquired": place.acquired,
                         "holder": describe_holder(session, address, place) if place.acquired else None,
                         "stale": stale(session, address, place), "reservation": place.reservation})
        return rows
    finally:
        close(session)
