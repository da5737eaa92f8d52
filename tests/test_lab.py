"""A lab on labgrid's coordinator, for real: `pkvmlab lab up` starts labgrid's coordinator and exporter and
pkvmlab's QEMU power switch on free 127.0.0.1 ports; runs acquire places, boot U-Boot boards through
them and release them.  Nothing is mocked; the lab is stopped at the end and must leave no process,
no acquired place and no listening port behind.

The boots are the qemu-uboot board's (about 15-25 s each on 2 shared cores); the failure cases
(held place, dead holder, bad filters) must fail within seconds.
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from boardrun import ROOT, parse_junit

from pkvmlab.boards import load_board
from pkvmlab.errors import ConfigError
from pkvmlab.lab import labservice
from pkvmlab.lab import place as lgplace

pytestmark = pytest.mark.qemu


def listening_sockets(pid):
    """[(ip, port)] of the TCP sockets process ``pid`` listens on (from /proc: its fds and /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((str(_ip(address)), int(port, 16)))
    return found


def _ip(hexed):
    """/proc/net/tcp{,6}'s address (32-bit words in host order, little-endian here); IPv4-mapped as IPv4."""
    raw = b"".join(bytes.fromhex(hexed[i:i + 8])[::-1] for i in range(0, len(hexed), 8))
    address = ipaddress.ip_address(raw)
    return getattr(address, "ipv4_mapped", None) or address


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def start(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "pkvmlab.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_output(proc, text, timeout=60):
    """Lines of ``proc`` up to the one holding ``text``."""
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never saw {text!r}: {''.join(lines)[-2000:]}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab_dir = tmp_path_factory.mktemp("lab")
    started = time.monotonic()
    state = labservice.up(lab_dir=lab_dir, coordinator="127.0.0.1:0")
    state["up_seconds"] = time.monotonic() - started
    env = dict(os.environ, LG_COORDINATOR=state["coordinator"])
    pids = [state["pid"]] + [child["pid"] for child in state["children"].values()]
    ports = [port for pid in pids[1:] for _, port in listening_sockets(pid)]
    try:
        yield {"state": state, "dir": lab_dir, "env": env, "address": state["coordinator"], "pids": pids}
        rows = lgplace.places_status(state["coordinator"])
    finally:
        message = labservice.down(lab_dir)        # always: a failed test must not leave the lab running
    assert "stopped" in message, message
    assert [pid for pid in pids if alive(pid)] == [], "lab processes outlived `lab down`"
    still = [port for port in ports if labservice_listening(port)]
    assert still == [], f"ports still listening: {still}"
    assert [row["name"] for row in rows if row["acquired"]] == [], f"places left acquired: {rows}"


def labservice_listening(port):
    from pkvmlab.lab.powerswitch import listening
    return listening(port)


def test_lab_listens_on_loopback_only_and_places_carry_board_facts(lab):
    state = lab["state"]
    assert state["coordinator"].startswith("127.0.0.1:")
    for name, child in state["children"].items():
        sockets = listening_sockets(child["pid"])
        if name != "bench-1":          # labgrid's exporter listens on nothing; it dials the coordinator
            assert sockets, f"{name} listens on nothing"
        assert all(ip == "127.0.0.1" for ip, _ in sockets), f"{name} listens beyond loopback: {sockets}"
    rows = {row["name"]: row for row in lgplace.places_status(lab["address"])}
    assert sorted(rows) == ["qemu-uboot-1", "qemu-uboot-2"]
    tags = rows["qemu-uboot-1"]["tags"]
    assert tags["board"] == "qemu-uboot" and tags["el2"] == "linux-kvm" and tags["boot_el"] == "el2"
    assert tags["kvm"] == "protected" and tags["firmware"] == "u-boot" and tags["delivery"] == "tftp"
    assert tags["bench"] == "qemu"                                         # the board file's own lab.tags
    status = cli("lab", "status", "--dir", str(lab["dir"]), env=lab["env"])
    assert status.returncode == 0 and "place qemu-uboot-1" in status.stdout and "free" in status.stdout


def test_place_tags_say_who_holds_el2():
    assert lgplace.board_tags(load_board("rb3-gen2"))["el2"] == "gunyah"
    tags = lgplace.board_tags(load_board("qemu-virt-el1"))
    assert tags["boot_el"] == "el1" and tags["kvm"] == "none"


def test_two_runs_at_once_pass_and_a_third_fails_fast_naming_the_holder(lab, tmp_path):
    runs = [start("run", "--place", name, "--reports", str(tmp_path), "--run-id", name, "suites/boot",
                  env=lab["env"]) for name in ("qemu-uboot-1", "qemu-uboot-2")]
    try:
        for proc in runs:
            wait_output(proc, "acquired place")
        started = time.monotonic()
        third = cli("run", "--place", "qemu-uboot-1", "--reports", str(tmp_path), "--run-id", "third",
                    "suites/boot", env=lab["env"], timeout=30)
        took = time.monotonic() - started
        assert third.returncode == 11, third.stdout + third.stderr
        assert took < 5, f"a held place took {took:.1f} s to refuse"
        holder = runs[0].pid
        assert "place qemu-uboot-1 is acquired by " in third.stderr and f"pkvmlab pid {holder}" in third.stderr, \
            third.stderr
        assert "\n" not in third.stderr.strip(), third.stderr          # one line, the first cause
        assert not (tmp_path / "third").exists()                        # failed before anything was written
        outputs = [proc.communicate(timeout=240)[0] for proc in runs]
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
    for name, proc, output in zip(("qemu-uboot-1", "qemu-uboot-2"), runs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        assert f"released place {name}" in output
        _, props, _ = parse_junit(tmp_path / name / "junit.xml")
        assert props["pkvmlab.place"] == name and props["pkvmlab.boot_el"] == "EL2"
        assert props["pkvmlab.kvm_mode"].startswith("protected-")
        assert "U-Boot 2023.01" in (tmp_path / name / "console.log").read_text(errors="replace")


def test_killed_run_leaves_the_place_reported_until_released(lab, tmp_path):
    proc = start("run", "--place", "qemu-uboot-1", "--reports", str(tmp_path), "--run-id", "killed", "suites/boot",
                 env=lab["env"])
    wait_output(proc, "booting qemu-uboot")
    proc.kill()
    proc.wait(10)
    started = time.monotonic()
    after = cli("run", "--place", "qemu-uboot-1", "--reports", str(tmp_path), "--run-id", "after", "suites/boot",
                env=lab["env"], timeout=30)
    assert time.monotonic() - started < 5 and after.returncode == 11, after.stderr
    assert f"left acquired by pkvmlab pid {proc.pid}, run killed, which is gone" in after.stderr, after.stderr
    assert "pkvmlab lab release qemu-uboot-1" in after.stderr
    status = cli("lab", "status", "--dir", str(lab["dir"]), env=lab["env"])
    assert "STALE" in status.stdout, status.stdout
    released = cli("lab", "release", "qemu-uboot-1", env=lab["env"])
    assert released.returncode == 0 and "released place qemu-uboot-1" in released.stdout, released.stderr
    # the board the killed run left on was switched off with the release: its serial port is free again
    serial = _resource(lab["address"], "qemu-uboot-1", "NetworkSerialPort")["port"]
    assert not labservice_listening(serial), "QEMU of the killed run still runs after the release"
    again = cli("run", "--place", "qemu-uboot-1", "--reports", str(tmp_path), "--run-id", "again", "suites/boot",
                "-k", "reached_shell", env=lab["env"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]


def _resource(address, group, cls):
    """The args of resource ``cls`` the exporter publishes for ``group``."""
    session = lgplace.connect(address)
    try:
        entries = session.resources["bench-1"][group]
        return next(entry.args for entry in entries.values() if entry.cls == cls)
    finally:
        lgplace.close(session)


def test_sigterm_mid_boot_releases_the_place(lab, tmp_path):
    proc = start("run", "--place", "qemu-uboot-2", "--reports", str(tmp_path), "--run-id", "term", "suites/boot",
                 env=lab["env"])
    wait_output(proc, "booting qemu-uboot")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 14, output[-3000:]
    assert "released place qemu-uboot-2" in output
    rows = {row["name"]: row for row in lgplace.places_status(lab["address"])}
    assert rows["qemu-uboot-2"]["acquired"] is None


def test_reservation_waits_up_to_its_bound_and_names_the_holders(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("LG_USERNAME", "alice")        # another user holds both places
    # one session for both: gRPC shares one connection per process, and the coordinator one session per peer
    held = lgplace.acquire(lab["address"], place="qemu-uboot-1")
    lgplace._acquire_place(held.session, "qemu-uboot-2")     # (the runs below get lab["env"]: not alice)
    try:
        started = time.monotonic()
        proc = cli("run", "--reserve", "board=qemu-uboot", "--wait", "2", "--reports", str(tmp_path),
                   "suites/boot", env=lab["env"], timeout=30)
        took = time.monotonic() - started
    finally:
        lgplace._call(held.session, "release", place="qemu-uboot-2", kick=False)
        lgplace.release(held, power=False)
    assert proc.returncode == 11, proc.stderr
    assert 2 <= took < 6, f"waited {took:.1f} s for a 2 s bound"
    assert "no place with board=qemu-uboot is free within 2 s" in proc.stderr, proc.stderr
    assert "qemu-uboot-1 by " in proc.stderr and "/alice" in proc.stderr, proc.stderr
    # the reservation was cancelled: nothing waits on the coordinator
    session = lgplace.connect(lab["address"])
    try:
        from labgrid.remote.generated import labgrid_coordinator_pb2 as pb2
        reservations = session.loop.run_until_complete(session.stub.GetReservations(pb2.GetReservationsRequest()))
        assert list(reservations.reservations) == []
    finally:
        lgplace.close(session)


def test_bad_places_and_filters_are_configuration_errors(lab, tmp_path):
    unknown = cli("run", "--place", "qemu-uboot-9", "--reports", str(tmp_path), env=lab["env"], timeout=30)
    assert unknown.returncode == 10, unknown.stderr
    assert "unknown place 'qemu-uboot-9'" in unknown.stderr and "qemu-uboot-1, qemu-uboot-2" in unknown.stderr
    nomatch = cli("run", "--reserve", "soc=rk3588", "--reports", str(tmp_path), env=lab["env"], timeout=30)
    assert nomatch.returncode == 10 and "has tags soc=rk3588" in nomatch.stderr, nomatch.stderr
    wrong = cli("run", "--board", "qemu-uefi", "--place", "qemu-uboot-1", "--reports", str(tmp_path),
                env=lab["env"], timeout=30)
    assert wrong.returncode == 10 and "holds board qemu-uboot, not qemu-uefi" in wrong.stderr, wrong.stderr
    rows = {row["name"]: row for row in lgplace.places_status(lab["address"])}
    assert rows["qemu-uboot-1"]["acquired"] is None        # released after the configuration error


def test_no_coordinator_is_infrastructure_and_quick(tmp_path):
    started = time.monotonic()
    proc = cli("run", "--place", "qemu-uboot-1", "--coordinator", "127.0.0.1:9", "--reports", str(tmp_path),
               timeout=30)
    assert proc.returncode == 11 and "coordinator 127.0.0.1:9 does not answer" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 10


def test_lab_up_refuses_every_interface(tmp_path):
    proc = cli("lab", "up", "--dir", str(tmp_path), "--coordinator", "0.0.0.0:20408", timeout=30)  # noqa: S104
    assert proc.returncode == 10 and "listens on every interface" in proc.stderr, proc.stderr
    assert not (tmp_path / "lab.json").exists()


def test_matrix_spreads_over_places_and_retries_a_lab_failure_elsewhere(lab, tmp_path):
    """Two cells over a broken place (its exporter group does not exist) and qemu-uboot-2: the cell that lands
    on the broken place fails for the lab (exit 11), is retried on qemu-uboot-2, and both attempts are kept."""
    session = lgplace.connect(lab["address"])
    original = dict(session.places["qemu-uboot-2"].tags)
    try:
        lgplace.ensure_place(session, "broken-1", "bench-1/no-such-group/*", dict(original, pool="retry"))
        lgplace.ensure_place(session, "qemu-uboot-2", "bench-1/qemu-uboot-2/*", dict(original, pool="retry"))
        lgplace.close(session)
        proc = cli("matrix", "--reserve", "pool=retry", "--kernels", "trixie-backports", "--modes",
                   "protected,nvhe", "--reports", str(tmp_path), env=lab["env"], timeout=400)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-4000:]
        assert "failed for the lab: retrying on another place" in output, output[-4000:]
        matrix_dir = next(tmp_path.glob("matrix-*"))
        attempts = json.loads((matrix_dir / "attempts.json").read_text())
        retried = [cell for cell, tries in attempts.items() if len(tries) == 2]
        assert retried, attempts
        for cell in retried:
            first, second = attempts[cell]
            assert (first["place"], first["exit"]) == ("broken-1", 11) and (second["place"], second["exit"]) == \
                ("qemu-uboot-2", 0), attempts
            assert (matrix_dir / f"{cell}.attempt1").is_dir()
        root = parse_junit_all(matrix_dir / "junit.xml")
        suites = root.findall("testsuite")
        assert len(suites) == 2
        for suite in suites:
            props = {p.get("name"): p.get("value") for p in suite.iter("property")}
            assert props["pkvmlab.place"] == "qemu-uboot-2" and props["pkvmlab.boot_el"] == "EL2"
            assert int(suite.get("failures")) + int(suite.get("errors")) == 0
    finally:
        session = lgplace.connect(lab["address"])
        lgplace.ensure_place(session, "qemu-uboot-2", "bench-1/qemu-uboot-2/*", original)
        if "broken-1" in session.places:
            lgplace._call(session, "del_place", place="broken-1")
        lgplace.close(session)


def parse_junit_all(path):
    from boardrun import SCHEMA
    SCHEMA.validate(str(path))
    return ET.parse(path).getroot()


def test_place_wait_is_bounded_and_takes_the_place_once_released(lab, tmp_path, monkeypatch):
    monkeypatch.setenv("LG_USERNAME", "carol")
    held = lgplace.acquire(lab["address"], place="qemu-uboot-1")
    try:
        started = time.monotonic()
        bounded = cli("run", "--place", "qemu-uboot-1", "--wait", "2", "--reports", str(tmp_path), "suites/boot",
                      env=lab["env"], timeout=30)
        took = time.monotonic() - started
        assert bounded.returncode == 11 and 2 <= took < 6, (took, bounded.stderr)
        assert "place qemu-uboot-1 is acquired by " in bounded.stderr and "/carol (waited 2 s)" in bounded.stderr
        # a waiting run takes the place as soon as it is released (no test selected: it boots nothing)
        waiting = start("run", "--place", "qemu-uboot-1", "--wait", "60", "--reports", str(tmp_path), "--run-id",
                        "waited", "suites/boot", "-k", "no_such_test", env=lab["env"])
        time.sleep(2)
    finally:
        lgplace.release(held, power=False)
    output = waiting.communicate(timeout=60)[0]
    assert "acquired place qemu-uboot-1" in output and "released place qemu-uboot-1" in output, output[-2000:]
    assert waiting.returncode == 5, output[-2000:]          # pytest: nothing selected


def test_lab_file_problems_are_listed_with_file_and_line(tmp_path):
    bad = tmp_path / "lab.yaml"
    bad.write_text("coordinator: 127.0.0.1\nexporters:\n  bench-1:\n    config: nowhere.yaml\n"
                   "places:\n  p1:\n    board: qemu-uboot\n    match: bench-9/g/*\n    colour: red\n")
    with pytest.raises(ConfigError) as caught:
        labservice.load_lab(bad)
    problems = "\n".join(caught.value.problems)
    assert f"{bad}:1: coordinator: give HOST:PORT" in problems
    assert f"{bad}:4: exporters.bench-1.config: nowhere.yaml not found" in problems
    assert f"{bad}:8: places.p1.match: give exporter/group/*" in problems
    assert f"{bad}:9: places.p1.colour: unknown field" in problems


def test_a_killed_lab_supervisor_takes_its_processes_with_it(tmp_path):
    state = labservice.up(lab_dir=tmp_path / "lab", coordinator="127.0.0.1:0")
    children = [child["pid"] for child in state["children"].values()]
    assert all(alive(pid) for pid in children)
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.2)
    assert [pid for pid in children if alive(pid)] == [], "lab processes outlived their supervisor"
    assert "no lab runs" in labservice.down(tmp_path / "lab")
