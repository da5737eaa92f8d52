"""The exporter side of a QEMU bench board: pkvmlab's power switch as a service beside ``labgrid-exporter``.

Why ours: on a local run, ``QEMUPowerSwitchDriver`` (``powerswitch.py``) plays the
board's PDU inside the harness.  A place on labgrid's coordinator is driven by a
client on any host, so the thing that starts and stops QEMU must live where the
board lives, next to the exporter, as a real PDU does; labgrid has no QEMU
power service.  This process is that: for each resource group of an exporter
config whose ``NetworkPowerPort`` is a ``simplerest`` URL on this host, it
activates one ``QEMUPowerSwitchDriver`` (the same driver a local run uses,
unchanged) with the group's serial port, power port and TFTP root, and serves
until SIGTERM/SIGINT, then stops every QEMU it started.

The exporter config is rendered with labgrid's own ``ResourceConfig`` (Jinja2,
same template variables as ``labgrid-exporter``), so both read the same ports.
QEMU's command line (machine, ``-bios``) comes from the board's own local
environment file, the emulator from the board file (``qemu_min_version``),
resolved here, on the exporter host.

    python -m pkvmlab.lab.benchpower --board qemu-uboot --hostname 127.0.0.1 envs/lab-exporter-qemu.yaml
"""

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import yaml

READY = "pkvmlab bench power ready"


def render_exporter_config(path, hostname, name="pkvmlab"):
    """The exporter config as ``labgrid-exporter`` sees it: {group: {resource: params}}."""
    from labgrid.remote.config import ResourceConfig
    env = {"env": os.environ, "isolated": False, "hostname": hostname, "name": name}
    with contextlib.redirect_stdout(io.StringIO()):   # ResourceConfig pprints what it rendered
        return ResourceConfig(str(path), env).data


def bench_groups(config, hostname):
    """{group: (power_port, serial_port, tftp_dir)} of groups this host plays the PDU for."""
    groups = {}
    for group, resources in (config or {}).items():
        if not isinstance(resources, dict):
            continue
        power = resources.get("NetworkPowerPort") or {}
        serial = resources.get("NetworkSerialPort") or {}
        tftp = resources.get("TFTPProvider") or {}
        if power.get("model") != "simplerest" or "port" not in serial:
            continue
        url = urlsplit(str(power.get("host", "")))
        if url.hostname not in (hostname, "127.0.0.1", "localhost") or url.port is None:
            continue
        groups[str(group)] = (url.port, int(serial["port"]), tftp.get("internal"))
    return groups


def _environment_file(board, groups, directory):
    """A labgrid environment with one target per group, each holding the board's QEMUPowerSwitchDriver."""
    from labgrid.util.yaml import load, resolve_templates
    with open(board.env) as file:
        local = load(file)
    resolve_templates(local, {k: v for k, v in os.environ.items() if k.startswith("LG_")})
    switch = dict(local["targets"]["main"]["drivers"]["QEMUPowerSwitchDriver"])
    targets = {}
    for group, (power_port, serial_port, tftp_dir) in groups.items():
        resources = {"TFTPProvider": {"internal": tftp_dir, "external": ""}} if tftp_dir else {}
        targets[group] = {"resources": resources,
                          "drivers": {"QEMUPowerSwitchDriver": dict(switch, port=power_port, serial_port=serial_port)}}
    env = {"targets": targets, "tools": local.get("tools", {}), "images": local.get("images", {}),
           "imports": ["pkvmlab.lab"]}
    path = Path(directory) / "benchpower-env.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(env)), sort_keys=False))   # OrderedDicts -> dicts
    return path


def _serialized(function, lock):
    def call(*args, **kwargs):
        with lock:
            return function(*args, **kwargs)
    return call


def serve(board_name, exporter_config, hostname="127.0.0.1", work_dir=None, qemu=None):
    from labgrid import Environment

    from ..boards import load_board
    from ..images.emulator import resolve_emulator
    board = load_board(board_name)
    groups = bench_groups(render_exporter_config(exporter_config, hostname), hostname)
    if not groups:
        raise SystemExit(f"{exporter_config}: no group with a simplerest NetworkPowerPort on {hostname}")
    if board.emulator is not None:
        emulator = resolve_emulator(qemu, board.emulator.qemu_min_version)
        os.environ["LG_PKVMLAB_QEMU"] = str(emulator.binary)
        os.environ["LG_PKVMLAB_CPU"] = board.emulator.cpu
    os.environ.setdefault("LG_PKVMLAB_IMAGES", "/nonexistent")   # kernel and initrd come over TFTP
    os.environ.setdefault("LG_PKVMLAB_KERNEL_ARGS", "")
    os.environ.setdefault("LG_PKVMLAB_TFTP_DIR", "/nonexistent")  # each group's TFTPProvider is the exporter's
    for _, _, tftp_dir in groups.values():
        if tftp_dir:
            os.makedirs(tftp_dir, exist_ok=True)
    work_dir = work_dir or tempfile.mkdtemp(prefix="pkvmlab-benchpower-")
    env = Environment(str(_environment_file(board, groups, work_dir)))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    targets = []
    one_at_a_time = threading.Lock()
    try:
        for group, (power_port, serial_port, _) in groups.items():
            target = env.get_target(group)
            targets.append(target)
            switch = target.get_driver("QEMUPowerSwitchDriver")     # activates: the switch listens
            # labgrid's step log keeps one stack per process (labgrid/step.py), not per thread: two switches
            # switching at once from their server threads break it (measured: AssertionError in steps.pop).
            switch.power = _serialized(switch.power, one_at_a_time)
            print(f"{group}: power http://{hostname}:{power_port}/relay/0/1, serial {hostname}:{serial_port}",
                  flush=True)
        print(f"{READY}: {len(targets)} boards ({board.name})", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        for target in targets:
            target.deactivate_all_drivers()      # powers off: QEMU stops
        print("pkvmlab bench power stopped", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pkvmlab.lab.benchpower", description=__doc__.splitlines()[0])
    parser.add_argument("--board", required=True, help="the board file whose QEMU each group plays")
    parser.add_argument("--hostname", default="127.0.0.1", help="the host name the exporter publishes")
    parser.add_argument("--qemu", help="emulator (as `pkvmlab run --qemu`; default: the board's)")
    parser.add_argument("--work-dir", help="where the generated labgrid environment goes")
    parser.add_argument("exporter_config", help="the labgrid-exporter resource config")
    args = parser.parse_args(argv)
    from ..errors import PkvmlabError
    try:
        serve(args.board, args.exporter_config, args.hostname, args.work_dir, args.qemu)
    except PkvmlabError as err:
        print(f"pkvmlab bench power: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 11
    return 0


if __name__ == "__main__":
    sys.exit(main())
