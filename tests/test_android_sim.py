"""The Pixel path end to end against the Pixel simulator: `pkvmlab run` with the real drivers, strategy and suites.

Every test runs ``pkvmlab run --board pixel-8 --env <env>`` as a lab would,
with ``pkvmlab/sim/bin/{adb,fastboot}`` as the tools (pkvmlab/sim/pixel.py:
simulated phones, state in a temporary directory, simulated time scaled to 0).
The JUnit file is parsed back and validated against Jenkins' junit-10.xsd; the
simulated phones' state files say what was really written, booted and
installed.  No phone, no network (the image set is files in the repository;
the EL probe comes from the image cache that bootstrap filled).
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

from pkvmlab.sim import pixel as sim

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))
SERIAL = "PKVMSIM0008"
IMAGES = ROOT / "images" / "pixel-sim"
SIM_RELEASE = "6.1.99-android14-11-pkvmlab-sim"     # what images/pixel-sim/boot.img boots
DEVICE_TOOL = re.compile(r"(^|/)(adb|fastboot)$")


def env_file(tmp_path, replace=None, name="env.yaml"):
    """envs/pixel-sim.yaml with absolute tool paths (and text replaced), written to tmp_path."""
    text = (ROOT / "envs" / "pixel-sim.yaml").read_text()
    text = text.replace("../pkvmlab/sim/bin/", f"{ROOT}/pkvmlab/sim/bin/")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def run(tmp_path, env=None, *paths, board="pixel-8", run_id="run"):
    command = [sys.executable, "-m", "pkvmlab.cli", "run", "--board", str(board),
               "--env", str(env or ROOT / "envs" / "pixel-sim.yaml"),
               "--reports", str(tmp_path / "reports"), "--run-id", run_id, *[str(p) for p in paths]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    return proc, tmp_path / "reports" / run_id


def junit(run_dir):
    path = run_dir / "junit.xml"
    SCHEMA.validate(str(path))
    suite = ET.parse(path).getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    return suite, props, cases


def outcome(case):
    bad = [child for child in case if child.tag in ("failure", "error", "skipped")]
    return (bad[0].tag, bad[0].get("message") or "") if bad else ("passed", "")


def audit_lines(run_dir):
    """The audit log's command lines (comments and host-only listings left out)."""
    lines = (run_dir / "audit.log").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def assert_every_command_names(lines, serial):
    for line in lines:
        argv = line.split("  ", 3)[3].split()
        tool = next(i for i, part in enumerate(argv) if DEVICE_TOOL.search(part))
        assert argv[tool + 1:tool + 3] == ["-s", serial], f"audit line without -s {serial}: {line}"


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_all_errored_with(cases, text, failure_class="infrastructure"):
    """Every case is an error of ``failure_class`` whose one-line message or body has ``text``."""
    assert cases, "no test cases in the JUnit file"
    for name, case in cases.items():
        kind, message = outcome(case)
        element = case.find("error")
        body = message + "\n" + ((element.text or "") if element is not None else "")
        assert kind == "error" and text in body, f"{name}: {kind} {message[:300]!r}, expected an error with {text!r}"
        assert element.get("type") == f"pkvmlab.{failure_class}", (name, element.get("type"))
        assert "\n" not in message, f"{name}: the message is one line: {message!r}"


def assert_untouched(devdir, before):
    after = sim.load_state(devdir)
    for key in ("mode", "boots", "writes", "written", "apex", "adb_root", "kernel"):
        assert after[key] == before[key], f"{devdir.name}: {key} changed from {before[key]!r} to {after[key]!r}"


def test_pixel8_end_to_end_one_off_boot(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    bystander = sim.create_device("BYSTANDER07", "pixel-7")   # a second phone on the same host: never touched
    bystander_before = sim.load_state(bystander)

    proc, run_dir = run(tmp_path)

    suite, props, cases = junit(run_dir)
    outcomes = {name: outcome(case) for name, case in cases.items()}
    for name in ("test_hypervisor_properties", "test_dev_kvm", "test_vm_info", "test_microdroid_protected_boot",
                 "test_crosvm_protected_vm", "test_boot_el", "test_kvm_mode", "test_no_kernel_problems",
                 "test_kernel_release_is_provisioned", "test_probe_completed", "test_host_read[protected]"):
        assert outcomes.get(name, ("missing",))[0] == "passed", f"{name}: {outcomes.get(name)}"
    # The simulator replays the EL probe recorded on the QEMU board on QEMU 10.0.2 (protected nVHE), a
    # faithful emulator: every check passes, the teardown ones included.
    failed = {name: o for name, o in outcomes.items() if o[0] in ("failure", "error")}
    assert not failed, failed
    assert outcomes.get("test_teardown_min[protected]", ("missing",))[0] == "passed"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert int(suite.get("tests")) >= 20 and suite.get("errors") == "0"
    assert props["pkvmlab.board"] == "pixel-8" and props["pkvmlab.console"] == "adb"
    assert props["pkvmlab.boot_el"] == "EL2" and props["pkvmlab.kvm_mode"] == "protected-nvhe"
    assert props["pkvmlab.kernel_release"] == SIM_RELEASE       # the image set's kernel, not the stock one
    assert float(props["pkvmlab.boot_seconds"]) > 0
    assert props["test_vm_info.hypervisor_version"] == "kvm.arm-protected"

    # What reached the phone: one-off boots of our boot.img (nothing written), the AVF APEX active.
    state = sim.load_state(phone)
    assert state["written"] == {} and state["writes"] == 0
    assert state["last_one_off_boot_sha256"] == sha256(IMAGES / "boot.img")
    assert state["apex"]["active"]["sha256"] == sha256(IMAGES / "com.android.virt.apex")
    assert state["kernel"]["release"] == SIM_RELEASE and state["adb_root"] is True
    assert_untouched(bystander, bystander_before)

    # The audit log: the exact command lines, every one naming the phone with -s.
    lines = audit_lines(run_dir)
    assert_every_command_names(lines, SERIAL)
    text = "\n".join(lines)
    for expected in (f"fastboot -s {SERIAL} getvar unlocked", f"fastboot -s {SERIAL} boot ",
                     f"adb -s {SERIAL} install ", f"adb -s {SERIAL} root", f"adb -s {SERIAL} push ",
                     f"adb -s {SERIAL} shell 'getprop sys.boot_completed'"):
        assert expected in text, f"{expected!r} not in the audit log"
    assert f"fastboot -s {SERIAL} flash" not in text, "one-off boot mode wrote a partition"
    assert all(re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z  exit=\d+  [\d.]+s  /", line) for line in lines), lines[:3]

    # Evidence kept with the report.
    assert "[INFO] pVM firmware" in (run_dir / "microdroid" / "console.txt").read_text()
    assert "kvm [1]: Protected nVHE mode initialized successfully" in (run_dir / "dmesg.txt").read_text()
    assert "payload ready" in (run_dir / "microdroid" / "logcat.txt").read_text()
    start = json.loads((run_dir / "elprobe.jsonl").read_text().splitlines()[0])
    assert start["record"] == "start" and start["uname"]["release"] == SIM_RELEASE
    flash = json.loads((run_dir / "flash.json").read_text())
    assert [step["result"] for step in flash["steps"]] == ["booted once", "installed", "booted once"]


def test_full_pixel_kernel_flash_bootloader_then_fastbootd(tmp_path, simdir):
    """mode: flash is the Pixel kernel flash: boot, dtbo, vendor_kernel_boot from the bootloader, then
    'fastboot reboot fastboot' and vendor_dlkm, system_dlkm from fastbootd; every command names the serial,
    every partition's sha256 is in flash.json and is what the phone holds."""
    phone = sim.create_device(SERIAL, "pixel-8", current_slot="b")
    env = env_file(tmp_path, {"mode: boot ": "mode: flash"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android", "-k", "test_dev_kvm")

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    _, props, cases = junit(run_dir)
    assert [outcome(case)[0] for case in cases.values()] == ["passed"]
    assert props["pkvmlab.kernel_release"] == SIM_RELEASE
    expected = {f"{key}_b": sha256(IMAGES / f"{key}.img")
                for key in ("boot", "dtbo", "vendor_kernel_boot", "vendor_dlkm", "system_dlkm")}
    state = sim.load_state(phone)
    assert {part: rec["sha256"] for part, rec in state["written"].items()} == expected
    assert state["kernel"]["source"] == "boot_b" and state["fastbootd_entries"] == 1
    lines = audit_lines(run_dir)
    assert_every_command_names(lines, SERIAL)
    device_steps = [line.split(f"-s {SERIAL} ", 1)[1].split()[:2] for line in lines
                    if re.search(r" (flash|reboot)( |$)", line) and "/fastboot " in line]
    assert device_steps == [["flash", "boot_b"], ["flash", "dtbo_b"], ["flash", "vendor_kernel_boot_b"],
                            ["reboot", "fastboot"], ["flash", "vendor_dlkm_b"], ["flash", "system_dlkm_b"],
                            ["reboot"]], device_steps
    steps = json.loads((run_dir / "flash.json").read_text())["steps"]
    written = {step["partition"]: step["sha256"] for step in steps if step["result"] == "written"}
    assert written == expected
    assert [step["partition"] for step in steps if step["result"] == "written"] == list(expected)


def test_locked_bootloader_is_refused_and_nothing_written(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8", unlocked=False)
    before = sim.load_state(phone)

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android")

    assert proc.returncode == 11   # infrastructure: the phone is not ready for the lab
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{SERIAL}: the bootloader is locked")
    state = sim.load_state(phone)
    assert state["written"] == {} and state["boots"] == before["boots"] and "last_one_off_boot_sha256" not in state
    lines = audit_lines(run_dir)
    assert_every_command_names(lines, SERIAL)
    assert lines[-1].endswith(f"fastboot -s {SERIAL} getvar unlocked"), lines
    assert not [line for line in lines if re.search(r" (flash|boot|install) ", line)]
    assert json.loads((run_dir / "flash.json").read_text())["steps"] == []


def test_user_build_refuses_adb_root_with_one_clear_error(tmp_path, simdir):
    sim.create_device(SERIAL, "pixel-8", build_type="user")

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android")

    assert proc.returncode == 11   # infrastructure: the phone's build cannot run the suites
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{SERIAL}: adb root refused: 'adbd cannot run as root in production builds'")
    assert audit_lines(run_dir)[-1].endswith(f"adb -s {SERIAL} root")


def test_wrong_sha256_in_the_manifest_stops_the_run_before_any_device_command(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    before = sim.load_state(phone)
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    manifest = (ROOT / "images" / "pixel-sim.yaml").read_text().replace("path: pixel-sim/", f"path: {images}/")
    manifest = manifest.replace("elprobe: elprobe", f"elprobe: {ROOT / 'images' / 'elprobe'}")
    wrong = sha256(IMAGES / "dtbo.img")
    bogus = "ab" * 32
    manifest = manifest.replace(wrong, bogus)
    (tmp_path / "set.yaml").write_text(manifest)
    board = tmp_path / "pixel-8.yaml"
    board.write_text((ROOT / "boards" / "pixel-8.yaml").read_text()
                     .replace("boot_timeout:", f"image_set: {tmp_path / 'set.yaml'}\nboot_timeout:"))

    proc, run_dir = run(tmp_path, None, board=board)

    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert f"files.dtbo: {images / 'dtbo.img'} has sha256 {wrong}, the manifest says {bogus}" in said, said[-2000:]
    assert not run_dir.exists(), "bad input must leave no half-written report"
    assert_untouched(phone, before)


def test_changed_image_after_provisioning_flashes_nothing(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    before = sim.load_state(phone)
    images = tmp_path / "provisioned"
    images.mkdir()
    sums = []
    for name, key in (("boot.img", "boot"), ("vendor_kernel_boot.img", "vendor_kernel_boot"), ("dtbo.img", "dtbo")):
        shutil.copyfile(IMAGES / name, images / key)
        sums.append(f"{sha256(images / key)}  {key}\n")
    (images / "SHA256SUMS").write_text("".join(sums))
    with open(images / "vendor_kernel_boot", "ab") as image:      # changed after its sum was taken
        image.write(b"tampered")
    env = env_file(tmp_path, {"mode: boot ": f"image_dir: {images}\n        mode: flash"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android")

    assert proc.returncode == 11   # infrastructure: an image changed under the run
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, "image set not flashed, nothing written")
    assert_all_errored_with(cases, f"vendor_kernel_boot: {images / 'vendor_kernel_boot'} has sha256")
    state = sim.load_state(phone)
    assert state["written"] == {} and state["writes"] == 0 and state["boots"] == before["boots"]
    assert not [line for line in audit_lines(run_dir) if " flash " in line or " boot " in line]


def test_device_dropping_off_usb_mid_flash(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8", faults={"drop_off_after_writes": 1})
    env = env_file(tmp_path, {"mode: boot ": "mode: flash"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android")

    assert proc.returncode == 11   # infrastructure: the device went away
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{SERIAL} dropped off USB during flash dtbo_a")
    assert_all_errored_with(cases, "written before the failure: boot_a")
    state = sim.load_state(phone)
    assert list(state["written"]) == ["boot_a"] and state["attached"] is False
    lines = audit_lines(run_dir)
    assert_every_command_names(lines, SERIAL)
    assert re.search(rf"exit=1 .*/fastboot -s {SERIAL} flash dtbo_a ", lines[-1]), lines[-1]
    steps = json.loads((run_dir / "flash.json").read_text())["steps"]
    assert [(s["partition"], s["result"]) for s in steps] == [("boot_a", "written"),
                                                             ("dtbo_a", "failed")]


def test_two_devices_answering_to_the_serial_are_refused(tmp_path, simdir):
    first = sim.create_device(SERIAL, "pixel-8", device_id="first")
    second = sim.create_device(SERIAL, "pixel-8", device_id="second")
    before = {d: sim.load_state(d) for d in (first, second)}

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android")

    assert proc.returncode == 11   # infrastructure: the lab's USB is ambiguous
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"2 devices attached answer to serial {SERIAL}")
    for devdir, state in before.items():
        assert_untouched(devdir, state)
    assert audit_lines(run_dir) == [], "a command was sent although the serial was ambiguous"


def test_missing_serial_is_refused_before_any_device_command(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    before = sim.load_state(phone)
    env = env_file(tmp_path, {f"serial: {SERIAL}": 'serial: ""'})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android")

    assert proc.returncode == 10   # configuration: the env file names no serial
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{env}: AndroidDevice has no serial", "configuration")
    assert_untouched(phone, before)
    log = run_dir / "audit.log"
    assert not log.exists() or audit_lines(run_dir) == []
