"""The Pixel path as a real phone behaves, against the Pixel simulator: images, reboots, names.

Each test runs ``pkvmlab run`` as a lab would (tests/test_android_sim.py's helpers:
simulated phones in a temporary directory, simulated time scaled to 0) and
checks what reached the simulated phone, the audit log and the JUnit file.
"""

import subprocess
import sys

import pytest
from test_android_sim import (
    ROOT,
    SERIAL,
    assert_all_errored_with,
    assert_every_command_names,
    assert_untouched,
    audit_lines,
    env_file,
    junit,
    outcome,
    run,
)

from pkvmlab.sim import pixel as sim


def real_looking_tools(tmp_path):
    """adb and fastboot that are not the simulator's files (as a lab's platform-tools would be), yet
    reach the simulated phone: what a simulator image set must never be sent through."""
    bin_dir = tmp_path / "platform-tools"
    bin_dir.mkdir()
    for tool in ("adb", "fastboot"):
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!/bin/sh\nexec {ROOT}/pkvmlab/sim/bin/{tool} \"$@\"\n")
        wrapper.chmod(0o755)
    return bin_dir


def test_simulator_images_are_refused_on_a_real_device_before_any_device_command(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    before = sim.load_state(phone)
    tools = real_looking_tools(tmp_path)
    env = env_file(tmp_path, {f"{ROOT}/pkvmlab/sim/bin/adb": str(tools / "adb"),
                              f"{ROOT}/pkvmlab/sim/bin/fastboot": str(tools / "fastboot"),
                              "mode: boot ": "mode: flash"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android")

    assert proc.returncode == 10, proc.stdout[-2000:]   # configuration: the wrong images for this device
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{env}: refusing to send Pixel simulator fixtures (boot, dtbo, "
                                   "vendor_kernel_boot, vendor_dlkm, system_dlkm, com.android.virt; images/pixel-sim/",
                                   "configuration")
    assert_all_errored_with(cases, f"to a device reached with real tools (adb = {tools / 'adb'}", "configuration")
    assert_all_errored_with(cases, "Point the board's image_set at your own build", "configuration")
    device_commands = [line for line in audit_lines(run_dir) if f" -s {SERIAL} " in line]
    assert device_commands == [], device_commands
    assert_untouched(phone, before)


def test_the_same_images_through_the_simulator_tools_are_flashed(tmp_path, simdir):
    """The control of the test above: only the tools differ, and through the simulator's they pass."""
    phone = sim.create_device(SERIAL, "pixel-8")
    env = env_file(tmp_path, {"mode: boot ": "mode: flash"})

    proc, _ = run(tmp_path, env, ROOT / "suites" / "android", "-k", "test_dev_kvm")

    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "boot_a" in sim.load_state(phone)["written"]


def test_shipped_pixel_boards_name_no_images():
    for name in ("pixel-6", "pixel-7", "pixel-8", "pixel-9"):
        text = (ROOT / "boards" / f"{name}.yaml").read_text()
        assert "\nimage_set:" not in text, f"boards/{name}.yaml names an image set"
    assert not (ROOT / "images" / "pixel-8-pkvm.yaml").exists()


def test_flash_mode_without_an_image_set_says_how_to_name_one(tmp_path, simdir):
    phone = sim.create_device(SERIAL, "pixel-8")
    before = sim.load_state(phone)
    env = env_file(tmp_path, {"  pkvmlab_image_set: pixel-sim\n": "", "mode: boot ": "mode: flash"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android")

    assert proc.returncode == 10, proc.stdout[-2000:]
    _, _, cases = junit(run_dir)
    assert_all_errored_with(cases, f"{env}: AndroidStrategy mode: flash, but the board names no image set",
                            "configuration")
    assert_all_errored_with(cases, "set image_set: <name> in the board file (docs/pixel.md", "configuration")
    assert_untouched(phone, before)


@pytest.mark.parametrize("board", ["pixel-6", "pixel-7", "pixel-9"])
def test_pixel_with_nothing_to_flash_is_not_rebooted(tmp_path, simdir, board):
    phone = sim.create_device(SERIAL, board)
    before = sim.load_state(phone)
    env = env_file(tmp_path, {"  pkvmlab_image_set: pixel-sim\n": "",
                              "pkvmlab_board: pixel-8": f"pkvmlab_board: {board}"})

    proc, run_dir = run(tmp_path, env, ROOT / "suites" / "android", ROOT / "suites" / "boot", board=board)

    _, props, cases = junit(run_dir)
    assert outcome(cases["test_vm_info"])[0] == "passed", outcome(cases["test_vm_info"])
    assert outcome(cases["test_boot_el"])[0] == "passed", outcome(cases["test_boot_el"])
    lines = audit_lines(run_dir)
    assert_every_command_names(lines, SERIAL)
    text = "\n".join(lines)
    assert " reboot" not in text and "/fastboot -s" not in text, text
    state = sim.load_state(phone)
    assert state["boots"] == before["boots"] and state["mode"] == "android"
    assert props["pkvmlab.kernel_release"] == before["kernel"]["release"]   # the phone's own kernel


def test_suite_name_and_kvm_arm_mode_agree_on_a_phone(tmp_path, simdir):
    sim.create_device(SERIAL, "pixel-8")

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "android", "-k", "test_dev_kvm")

    assert proc.returncode == 0, proc.stdout[-2000:]
    suite, props, cases = junit(run_dir)
    mode = suite.get("name").split("/")[2]
    assert mode == props["pkvmlab.kvm_arm_mode"] == "protected", (suite.get("name"), props["pkvmlab.kvm_arm_mode"])
    assert props["pkvmlab.identity"] == "pixel-8.protected"
    assert cases["test_dev_kvm"].get("classname").startswith("pixel-8.protected.")


def test_pixel_py_runs_as_a_script_as_docs_say(tmp_path):
    directory = tmp_path / "sim"
    env = {"PATH": "/usr/bin:/bin", sim.ENV_DIR: str(directory)}
    done = subprocess.run([sys.executable, "pkvmlab/sim/pixel.py", "sim", "init", "--serial", "DOCS0001",
                           "--model", "pixel-7", "--user-build"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(directory / "DOCS0001")
    state = sim.load_state(directory / "DOCS0001")
    assert (state["model"], state["build_type"]) == ("pixel-7", "user")
    shown = subprocess.run([sys.executable, "pkvmlab/sim/pixel.py", "sim", "set", "--serial", "DOCS0001",
                            "faults.never_boot_complete=true"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert sim.load_state(directory / "DOCS0001")["faults"]["never_boot_complete"] is True


def test_the_teardown_finding_is_a_fault_the_simulator_replays_only_when_asked(tmp_path, simdir):
    sim.create_device(SERIAL, "pixel-8", faults={"elprobe_teardown_leak": True})

    proc, run_dir = run(tmp_path, None, ROOT / "suites" / "pvm")

    assert proc.returncode == 1, proc.stdout[-2000:]   # a board finding
    _, _, cases = junit(run_dir)
    outcomes = {name: outcome(case) for name, case in cases.items()}
    assert outcomes["test_teardown_min[protected]"][0] == "failure"
    assert "the minimal protected guest's data survived teardown" in outcomes["test_teardown_min[protected]"][1]
    assert outcomes["test_teardown[protected]"][0] == "failure"
    assert outcomes["test_host_read[protected]"][0] == "passed"
    assert outcomes["test_teardown_min[normal]"][0] == "passed"


def test_try_it_command_passes(tmp_path, simdir):
    """docs/pixel.md's first command, as written (only the reports directory differs)."""
    sim.create_device(SERIAL, "pixel-8")

    proc, run_dir = run(tmp_path)

    assert proc.returncode == 0, proc.stdout[-3000:]
    _, _, cases = junit(run_dir)
    assert not [name for name, case in cases.items() if outcome(case)[0] in ("failure", "error")]
    assert outcome(cases["test_teardown_min[protected]"])[0] == "passed"
