"""pkvmlab's AdbDriver and audit log in-process against the Pixel simulator, and the simulator's EL probe.

The driver is loaded from a labgrid environment like a lab's (envs/pixel-sim.yaml
with absolute tool paths), so what is tested is the labgrid wiring too:
resource, bindings, activation refusing a missing device.
"""

import hashlib
import json
import struct

import pytest
from labgrid import Environment
from test_android_sim import ROOT, SERIAL, env_file

from pkvmlab.errors import DeviceError
from pkvmlab.lab.audit import start_audit_log
from pkvmlab.sim import pixel as sim

RECORDING = [json.loads(line) for line in sim.ELPROBE_RECORDING.read_text().splitlines()
             if line.strip() and not line.startswith("#")]


@pytest.fixture
def target(tmp_path, simdir):
    env = Environment(str(env_file(tmp_path)))
    yield env.get_target("main")
    env.cleanup()


def fake_elprobe(path, machine=183):
    """An ELF header for ``machine`` (183 = aarch64): enough for the simulator's exec check."""
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack("<HH", 2, machine)
    path.write_bytes(header + b"\0" * 64)
    path.chmod(0o755)
    return path


def test_recording_is_the_protected_qemu_run():
    start = RECORDING[0]
    assert start["record"] == "start" and start["uname"]["release"].startswith("7.3.4")
    assert "kvm-arm.mode=protected" in start["cmdline"]
    assert RECORDING[-1]["record"] == "summary" and RECORDING[-1]["complete"] is True
    host_read = [r for r in RECORDING if r.get("probe") == "host_read" and r.get("vm") == "protected"]
    assert host_read[0]["outcome"] == "fault" and host_read[0]["signal"] == "SIGSEGV"


def test_adb_run_keeps_stdout_stderr_and_exit_code(target):
    sim.create_device(SERIAL)
    adb = target.get_driver("AdbDriver")
    assert adb.run("echo out; echo err >&2; exit 7") == (["out"], ["err"], 7)
    assert adb.run("cat /proc/cmdline")[0][0].endswith("kvm-arm.mode=protected")


def test_adb_driver_refuses_a_device_that_is_not_attached(target):
    sim.create_device(SERIAL, attached=False)
    sim.create_device("SOMEONEELSE")
    with pytest.raises(DeviceError, match=f"{SERIAL} is not attached.*SOMEONEELSE"):
        target.get_driver("AdbDriver")


def test_pushed_elprobe_prints_the_recording_with_the_simulated_release(target, tmp_path):
    devdir = sim.create_device(SERIAL)
    adb = target.get_driver("AdbDriver")
    local = fake_elprobe(tmp_path / "elprobe")
    adb.put(str(local), "/data/local/tmp/elprobe")
    adb.root()
    out, err, code = adb.run("/data/local/tmp/elprobe --timeout 30")
    assert (code, err) == (0, [])
    records = [json.loads(line) for line in out]
    release = sim.load_state(devdir)["kernel"]["release"]
    assert records[0]["uname"]["release"] == release != RECORDING[0]["uname"]["release"]
    assert records[1:] == RECORDING[1:]
    # chmod and checksums see the pushed file itself, not the stand-in.
    out, _, code = adb.run("chmod 755 /data/local/tmp/elprobe && sha256sum /data/local/tmp/elprobe")
    assert (code, out) == (0, [f"{hashlib.sha256(local.read_bytes()).hexdigest()}  /data/local/tmp/elprobe"])


def test_pushed_elprobe_as_shell_user_cannot_open_dev_kvm(target, tmp_path):
    sim.create_device(SERIAL)
    adb = target.get_driver("AdbDriver")
    adb.put(str(fake_elprobe(tmp_path / "elprobe")), "/data/local/tmp/elprobe")
    out, _, code = adb.run("cd /data/local/tmp && ./elprobe")
    assert code == 3
    assert [json.loads(line)["record"] for line in out] == ["start", "fatal", "summary"]
    assert json.loads(out[1])["errno_name"] == "EACCES"


def test_pushed_file_for_another_architecture_does_not_run(target, tmp_path):
    sim.create_device(SERIAL)
    adb = target.get_driver("AdbDriver")
    adb.put(str(fake_elprobe(tmp_path / "elprobe", machine=62)), "/data/local/tmp/elprobe")   # x86-64
    _, err, code = adb.run("/data/local/tmp/elprobe")
    assert code == 126 and "Exec format error" in err[0]


def test_audit_log_records_each_command_with_its_serial(target, tmp_path):
    sim.create_device(SERIAL)
    log = tmp_path / "audit.log"
    with start_audit_log(log) as audit:
        adb = target.get_driver("AdbDriver")
        adb.run("exit 3")
    lines = log.read_text().splitlines()
    assert lines[0].startswith("# pkvmlab audit log")
    assert lines[1].startswith("# host-only ") and lines[1].endswith("/adb devices -l")
    assert lines[-1].endswith(f"/pkvmlab/sim/bin/adb -s {SERIAL} shell 'exit 3'") and "  exit=3  " in lines[-1]
    assert [r["host_only"] for r in audit.records] == [True, False]
    assert str(ROOT) in lines[-1]
