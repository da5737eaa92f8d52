"""Spread runs over places: one worker per place, each taking the next job; an infrastructure failure retried once
on another place.

Why ours: labgrid reserves and acquires one place per request; a matrix wants
every matching place busy at once and a cell that failed for the lab's reason
(exit 11, or no report at all) tried again elsewhere, with both attempts on
record.  Reservation and acquisition stay labgrid's: each job is a ``pkvmlab run
--place P`` that acquires and releases ``P`` itself (``placerun``).  A job is
never retried after a board finding or a configuration error: retrying those
would hide them.
"""

import queue
import threading
import time

from ..outcome import INFRASTRUCTURE
from . import place as lgplace


def free_places(address, filters):
    """(board name, [place names]) of the idle places matching ``filters``; raises when none can serve."""
    from ..errors import ConfigError
    session = lgplace.connect(address)
    try:
        lgplace._pump(session, 0.1)
        matching = lgplace.matching_places(session, filters)
        wanted = " ".join(f"{k}={v}" for k, v in filters.items())
        if not matching:
            raise ConfigError("--reserve", [f"no place on coordinator {address} has tags {wanted}. "
                                            f"Places: {lgplace._describe_places(session)}"])
        boards = sorted({p.tags.get("board", "?") for p in matching})
        if len(boards) > 1:
            raise ConfigError("--reserve", [f"places of several boards have tags {wanted} ({', '.join(boards)}): "
                                            "add board=NAME"])
        idle = [p.name for p in matching if not p.acquired and not p.reservation]
        if not idle:
            held = "; ".join(f"{p.name} by {lgplace.describe_holder(session, address, p)}" for p in matching)
            raise lgplace.PlaceBusy(f"no place with {wanted} is free: {held}")
        return boards[0], idle
    finally:
        lgplace.close(session)


def infrastructure_failure(result):
    """A run that failed for the lab's reason: exit 11, or no JUnit file at all."""
    return result.get("exit") == INFRASTRUCTURE.exit_code or not result.get("reported", True)


def run_on_places(jobs, places, run, on_attempt=None, retry=infrastructure_failure, poll=0.1):
    """Run every job, one per place at a time; returns {job: (result, attempts)} in job order.

    ``run(job, place, attempt)`` runs one job on one place and returns a dict (with ``exit``);
    ``on_attempt(job, place, result, retrying)`` is told of each attempt.  A job whose first
    attempt ``retry`` says failed for the lab is queued again for another place (the same one
    only when there is no other) and its attempts are both kept.
    """
    todo = queue.Queue()
    for job in jobs:
        todo.put((job, []))
    done = {}
    lock = threading.Lock()

    def worker(place):
        while True:
            with lock:
                if len(done) == len(jobs):
                    return
            try:
                job, attempts = todo.get(timeout=poll)
            except queue.Empty:
                continue
            if attempts and attempts[-1]["place"] == place and len(places) > 1:
                todo.put((job, attempts))          # a retry goes to another place
                time.sleep(poll)
                continue
            started = time.monotonic()
            try:
                result = run(job, place, len(attempts) + 1)
            except Exception as err:  # noqa: BLE001 - a worker that dies would leave its job undone forever
                result = {"exit": None, "reported": False, "error": f"{type(err).__name__}: {err}"}
            again = not attempts and retry(result)
            attempts.append({"place": place, "exit": result.get("exit"), "attempt": len(attempts) + 1,
                             "seconds": round(time.monotonic() - started, 1),
                             "run_dir": str(result.get("run_dir", ""))})
            if on_attempt is not None:
                on_attempt(job, place, result, again)
            if again:
                todo.put((job, attempts))
                continue
            with lock:
                done[job] = (result, attempts)

    threads = [threading.Thread(target=worker, args=(place,), name=f"place-{place}") for place in places]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {job: done[job] for job in jobs}
