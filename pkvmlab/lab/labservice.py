"""``pkvmlab lab up|down|status``: a one-machine lab of labgrid's coordinator, exporter(s) and places.

Everything that runs is labgrid's own (``labgrid-coordinator``, ``labgrid-exporter``)
but for the QEMU boards' power switch (``benchpower``: labgrid has no QEMU PDU).
What is ours is the supervision, and why: a lab on one machine needs them
started in order (coordinator, then each exporter's power switch, then the
exporter), each bound to 127.0.0.1, the places created with the board's facts
as tags, and all of it stopped together.  One supervisor process owns them as
children with Linux's death signal (``childproc.die_with_parent``): stopping it
(``lab down``, SIGTERM) stops the exporters, then the power switches (which
stop their QEMUs), then the coordinator; killing it kills them all.

The lab file (``envs/lab-local.yaml``) names the coordinator's address, the
exporters (labgrid exporter configs) and the places.  State lives in the lab
directory (default ``<checkout>/.lab``): ``lab.json`` (addresses and pids, once
ready), each process's log, and the coordinator's ``places.yaml``.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..boards import load_board, project_root
from ..childproc import _start_time, die_with_parent, stop
from ..errors import ConfigError, InfrastructureError
from ..yamlfile import Field, check_fields, load_yaml, raise_if_problems

STATE = "lab.json"
START_TIMEOUT = 60.0        # coordinator + power switches + exporters + places, on a loaded 2-core machine

_EXPORTER_SCHEMA = {
    "config": Field((str,), required=True),
    "bench_power": Field((str,)),
    "boards": Field((int,)),
    "hostname": Field((str,)),
}
_PLACE_SCHEMA = {
    "board": Field((str,), required=True),
    "match": Field((str,), required=True),
    "tags": Field((dict,)),
}
_LAB_SCHEMA = {
    "coordinator": Field((str,), required=True),
    "exporters": Field((dict,), required=True),
    "places": Field((dict,), required=True),
}


class LabError(InfrastructureError):
    """The lab's processes did not start, or stopped."""


def default_lab_dir():
    return Path(os.environ.get("PKVMLAB_LAB_DIR") or project_root() / ".lab")


def default_lab_file():
    return project_root() / "envs" / "lab-local.yaml"


def load_lab(path):
    """The lab file, validated (every problem at once, with file:line)."""
    path = Path(path)
    data = load_yaml(path)
    problems = check_fields(path, data, _LAB_SCHEMA)
    exporters = data.get("exporters") if isinstance(data.get("exporters"), dict) else {}
    for name, exporter in exporters.items():
        if not isinstance(exporter, dict):
            problems.append(f"{path}:{exporters.line_of(name)}: exporters.{name}: must be a mapping")
            continue
        check_fields(path, exporter, _EXPORTER_SCHEMA, prefix=f"exporters.{name}.", problems=problems)
        config = exporter.get("config")
        if isinstance(config, str) and not (path.parent / config).is_file():
            problems.append(f"{path}:{exporter.line_of('config')}: exporters.{name}.config: {config} not found")
    places = data.get("places") if isinstance(data.get("places"), dict) else {}
    for name, place in places.items():
        if not isinstance(place, dict):
            problems.append(f"{path}:{places.line_of(name)}: places.{name}: must be a mapping")
            continue
        check_fields(path, place, _PLACE_SCHEMA, prefix=f"places.{name}.", problems=problems)
        match = place.get("match")
        if isinstance(match, str) and (not 2 <= match.count("/") <= 3 or match.split("/")[0] not in exporters):
            problems.append(f"{path}:{place.line_of('match')}: places.{name}.match: give exporter/group/* with "
                            f"an exporter of this file ({', '.join(exporters)}), got {match!r}")
    address = data.get("coordinator")
    if isinstance(address, str) and not re.fullmatch(r"[^:\s]+:\d+", address):
        problems.append(f"{path}:{data.line_of('coordinator')}: coordinator: give HOST:PORT, got {address!r}")
    raise_if_problems(path, problems)
    return data


def free_port_base(count, host="127.0.0.1"):
    """A base port B with B+1 .. B+10*count+2 free on ``host`` (each board uses B+10N+1, B+10N+2)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1] // 10 * 10
        if base + 10 * count + 2 > 65535:
            continue
        try:
            for n in range(1, count + 1):
                for offset in (1, 2):
                    with socket.socket() as sock:
                        sock.bind((host, base + 10 * n + offset))
        except OSError:
            continue
        return base
    raise LabError(f"no free range of {10 * count + 2} ports on {host}")


def _read_state(lab_dir):
    try:
        return json.loads((Path(lab_dir) / STATE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid, start):
    return pid is not None and _start_time(pid) == start


def running_lab(lab_dir=None):
    """The state of the lab whose supervisor runs in ``lab_dir``, or None."""
    state = _read_state(lab_dir or default_lab_dir())
    if state and state.get("state") == "ready" and _alive(state.get("pid"), state.get("start")):
        return state
    return None


# ---- the supervisor (runs as its own process) ---------------------------------------------------

class Supervisor:
    def __init__(self, lab_file, lab_dir, coordinator=None, port_base=None):
        self.lab_file = Path(lab_file).resolve()
        self.lab = load_lab(self.lab_file)
        self.lab_dir = Path(lab_dir).resolve()
        self.coordinator = coordinator or self.lab["coordinator"]
        self.port_base = port_base
        self.children = []      # (name, Popen), in start order
        self.stopping = False

    def _spawn(self, name, cmd, env=None):
        log = open(self.lab_dir / f"{name}.log", "wb")   # noqa: SIM115 - the child writes it
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.lab_dir / ("coordinator" if name == "coordinator" else "."),
                                env=env, preexec_fn=die_with_parent(signal.SIGTERM))
        log.close()
        self.children.append((name, proc))
        return proc

    def _wait_line(self, name, proc, pattern, deadline):
        path = self.lab_dir / f"{name}.log"
        while time.monotonic() < deadline:
            text = path.read_text(errors="replace") if path.exists() else ""
            found = re.search(pattern, text)
            if found:
                return found
            if proc.poll() is not None:
                tail = " | ".join(text.strip().splitlines()[-3:])
                raise LabError(f"{name} exited at start (code {proc.returncode}): {tail or 'no output'} ({path})")
            time.sleep(0.05)
        raise LabError(f"{name} was not ready within {START_TIMEOUT:.0f} s ({path})")

    def start(self):
        deadline = time.monotonic() + START_TIMEOUT
        (self.lab_dir / "coordinator").mkdir(parents=True, exist_ok=True)
        venv_bin = Path(sys.executable).parent
        coordinator = self._spawn("coordinator", [str(venv_bin / "labgrid-coordinator"), "--listen", self.coordinator])
        found = self._wait_line("coordinator", coordinator, r"listening on (\S+:\d+)", deadline)
        self.address = found.group(1)
        count = sum(int(e.get("boards", 2)) for e in self.lab["exporters"].values())
        base = self.port_base if self.port_base is not None else free_port_base(count + 1)
        env = dict(os.environ, PKVMLAB_LAB_DIR=str(self.lab_dir), LG_COORDINATOR=self.address)
        self.exporters = {}
        for offset, (name, exporter) in enumerate(self.lab["exporters"].items()):
            config = str(self.lab_file.parent / exporter["config"])
            hostname = exporter.get("hostname", "127.0.0.1")
            xenv = dict(env, PKVMLAB_LAB_PORT_BASE=str(base + 100 * offset),
                        PKVMLAB_LAB_BOARDS=str(exporter.get("boards", 2)))
            if exporter.get("bench_power"):
                power = self._spawn(f"{name}-power", [sys.executable, "-m", "pkvmlab.lab.benchpower", "--board",
                                                      exporter["bench_power"], "--hostname", hostname,
                                                      "--work-dir", str(self.lab_dir), config], env=xenv)
                self._wait_line(f"{name}-power", power, r"pkvmlab bench power ready", deadline)
            proc = self._spawn(name, [str(venv_bin / "labgrid-exporter"), "--coordinator", self.address,
                                      "--name", name, "--hostname", hostname, config], env=xenv)
            self._wait_line(name, proc, r"Exporter ready", deadline)
            self.exporters[name] = {"pid": proc.pid, "port_base": base + 100 * offset}
        self._make_places(deadline)
        self._write("ready")

    def _make_places(self, deadline):
        from . import place as lgplace
        session = lgplace.connect(self.address)
        try:
            for name, spec in self.lab["places"].items():
                tags = lgplace.board_tags(load_board(spec["board"]))
                tags.update({str(k): str(v) for k, v in (spec.get("tags") or {}).items()})
                lgplace.ensure_place(session, name, spec["match"], tags)
            # ready once every place's matches are served by a resource (labgrid's own check)
            from labgrid.remote.client import Error
            pending = set(self.lab["places"])
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    try:
                        session.check_matches(session.places[name])
                        pending.discard(name)
                    except Error:
                        pass
                if pending:
                    lgplace._pump(session, 0.2)
            if pending:
                raise LabError(f"places {', '.join(sorted(pending))} have no matching resources "
                               f"within {START_TIMEOUT:.0f} s")
        finally:
            lgplace.close(session)

    def _write(self, state):
        data = {"state": state, "pid": os.getpid(), "start": _start_time(os.getpid()),
                "coordinator": getattr(self, "address", None), "lab_file": str(self.lab_file),
                "exporters": getattr(self, "exporters", {}), "places": list(self.lab["places"]),
                "children": {name: {"pid": p.pid, "start": _start_time(p.pid)} for name, p in self.children}}
        tmp = self.lab_dir / f".{STATE}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.lab_dir / STATE)

    def stop(self):
        """Exporters first (their places go offline), then power switches (QEMUs stop), then the coordinator."""
        for _, proc in reversed(self.children):
            stop(proc, grace=10)
        self._write("stopped")

    def watch(self):
        """Until SIGTERM: note children that end (an exporter exits when the coordinator goes away)."""
        gone = set()
        while not self.stopping:
            for name, proc in self.children:
                if proc.poll() is not None and name not in gone:
                    gone.add(name)
                    print(f"pkvmlab lab: {name} exited (code {proc.returncode})", flush=True)
            time.sleep(0.5)


def supervise(lab_file, lab_dir, coordinator=None, port_base=None):
    lab_dir = Path(lab_dir)
    lab_dir.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(lab_file, lab_dir, coordinator, port_base)

    def on_signal(signum, frame):
        supervisor.stopping = True
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        supervisor._write("starting")
        supervisor.start()
        print(f"pkvmlab lab ready: coordinator {supervisor.address}", flush=True)
        supervisor.watch()
    except KeyboardInterrupt:
        pass
    except Exception as err:  # noqa: BLE001 - recorded for `lab up`, which shows it
        (lab_dir / "error.txt").write_text(f"{type(err).__name__}: {err}\n")
        print(f"pkvmlab lab: {type(err).__name__}: {err}", flush=True)
        raise SystemExit(11) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        supervisor.stop()


# ---- the commands -------------------------------------------------------------------------------

def up(lab_file=None, lab_dir=None, coordinator=None, foreground=False):
    """Start the lab; returns its state once ready (or runs it in the foreground until signalled)."""
    lab_file = Path(lab_file or default_lab_file())
    lab = load_lab(lab_file)                     # configuration errors before anything starts
    for spec in lab["places"].values():
        load_board(spec["board"])
    lab_dir = Path(lab_dir or default_lab_dir())
    address = coordinator or lab["coordinator"]
    host = address.rsplit(":", 1)[0]
    if host in ("0.0.0.0", "::", "[::]", ""):   # noqa: S104 - refusing it is the point
        raise ConfigError(lab_file, [f"coordinator {address}: listens on every interface; give the address "
                                     f"meant (127.0.0.1 for a one-machine lab; docs/lab.md)"])
    running = running_lab(lab_dir)
    if running:
        return running
    lab_dir.mkdir(parents=True, exist_ok=True)
    (lab_dir / "error.txt").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pkvmlab.lab.labservice", str(lab_file.resolve()), str(lab_dir.resolve()), address]
    if foreground:
        supervise(lab_file, lab_dir, address)
        return None
    with open(lab_dir / "supervisor.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=project_root())
    deadline = time.monotonic() + START_TIMEOUT + 5
    while time.monotonic() < deadline:
        state = _read_state(lab_dir)
        if state and state.get("pid") == proc.pid and state.get("state") == "ready":
            return state
        if proc.poll() is not None:
            error = (lab_dir / "error.txt").read_text().strip() if (lab_dir / "error.txt").exists() else \
                f"supervisor exited (code {proc.returncode}); see {lab_dir / 'supervisor.log'}"
            raise LabError(f"lab did not start: {error}")
        time.sleep(0.1)
    proc.terminate()
    raise LabError(f"lab did not start within {START_TIMEOUT:.0f} s; see {lab_dir / 'supervisor.log'}")


def down(lab_dir=None, timeout=30.0):
    """Stop the lab's supervisor (and so every process of the lab); the message to show."""
    lab_dir = Path(lab_dir or default_lab_dir())
    state = _read_state(lab_dir)
    if not state or not _alive(state.get("pid"), state.get("start")):
        return f"no lab runs in {lab_dir}"
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(state["pid"], state["start"]):
        time.sleep(0.1)
    if _alive(state["pid"], state["start"]):
        os.kill(state["pid"], signal.SIGKILL)    # its children have death signals
        return f"lab in {lab_dir} did not stop within {timeout:.0f} s: killed"
    return f"lab in {lab_dir} stopped (coordinator {state.get('coordinator')})"


def status(lab_dir=None, address=None):
    """Lines describing the local lab's processes and every place on the coordinator."""
    from . import place as lgplace
    lab_dir = Path(lab_dir or default_lab_dir())
    lines = []
    state = running_lab(lab_dir)
    if state:
        lines.append(f"lab in {lab_dir}: coordinator {state['coordinator']} (supervisor pid {state['pid']})")
        for name, child in state["children"].items():
            alive = "running" if _alive(child["pid"], child["start"]) else "EXITED"
            lines.append(f"  {name:16} pid {child['pid']:<8} {alive}")
        address = address or state["coordinator"]
    elif address is None:
        lines.append(f"no lab runs in {lab_dir}")
    if address:
        for row in lgplace.places_status(address):
            tags = " ".join(f"{k}={v}" for k, v in sorted(row["tags"].items()))
            held = "free" if not row["acquired"] else ("STALE: " if row["stale"] else "acquired by ") + row["holder"]
            lines.append(f"  place {row['name']:14} {held}  [{tags}]")
    return lines


if __name__ == "__main__":
    supervise(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
