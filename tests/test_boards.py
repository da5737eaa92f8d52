"""Board files: the real ones load; every kind of bad input names file, line and field."""

import pytest

from pkvmlab.boards import known_boards, load_board
from pkvmlab.errors import ConfigError, UnknownNameError

GOOD = """\
name: {name}
soc: Test SoC
console: serial
env: envs/qemu-virt.yaml
image_set: qemu-arm64
kernel_args: kvm-arm.mode=protected
power: emulator
firmware: none
delivery: qemu
emulator:
  cpu: max
expect:
  boot_el: EL2
  kvm_mode: protected
  pvm: true
"""


def write_board(tmp_path, text, name="b1"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.format(name=name))
    return path


def test_repository_boards_load():
    names = known_boards()
    assert {"qemu-virt", "qemu-virt-el1"} <= set(names)
    for name in names:
        board = load_board(name)
        assert board.env.is_file()
    el1 = load_board("qemu-virt-el1")
    assert (el1.expect.boot_el, el1.expect.kvm_mode, el1.expect.dev_kvm) == ("EL1", "none", False)
    assert load_board("qemu-virt").kvm_arm_mode == "protected"


def test_unknown_board_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        load_board("qemu-virtt")
    message = str(info.value)
    assert "unknown board 'qemu-virtt'" in message and "qemu-virt-el1" in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write_board(tmp_path, GOOD.replace("  kvm_mode: protected", "  kvm_mode: [protected"))
    with pytest.raises(ConfigError) as info:
        load_board(path)
    assert f"{path}:" in str(info.value) and "malformed YAML" in str(info.value)
    line = int(str(info.value).split(f"{path}:")[1].split(":")[0])
    assert line in (15, 16)


def test_every_problem_reported_with_line_and_field(tmp_path):
    text = GOOD.replace("  boot_el: EL2", "  boot_el: EL3").replace("console: serial", "console: serial\nsocc: typo")
    text = text.replace("  pvm: true\n", "")
    path = write_board(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_board(path)
    problems = info.value.problems
    assert any(p.startswith(f"{path}:14: expect.boot_el: must be one of EL1, EL2") for p in problems), problems
    assert any(p.startswith(f"{path}:4: socc: unknown field") for p in problems), problems
    assert any("expect.pvm: required field missing" in p for p in problems), problems
    assert len(problems) == 3


def test_wrong_types_and_name_mismatch(tmp_path):
    text = GOOD.replace("  pvm: true", "  pvm: 'yes'").replace("name: {name}", "name: other")
    path = write_board(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_board(path)
    text = str(info.value)
    assert "expect.pvm: must be bool, got str 'yes'" in text
    assert "name: 'other' differs from the file name 'b1'" in text


def test_missing_env_file_is_named(tmp_path):
    path = write_board(tmp_path, GOOD.replace("envs/qemu-virt.yaml", "envs/nope.yaml"))
    with pytest.raises(ConfigError, match=r"b1.yaml:4: env: environment file envs/nope.yaml not found"):
        load_board(path)


def test_duplicate_key_is_an_error(tmp_path):
    path = write_board(tmp_path, GOOD + "soc: again\n")
    with pytest.raises(ConfigError, match="duplicate key 'soc'"):
        load_board(path)


def test_old_kind_field_names_its_replacement(tmp_path):
    path = write_board(tmp_path, GOOD.replace("console: serial\n", "kind: qemu\nconsole: serial\n"))
    with pytest.raises(ConfigError) as info:
        load_board(path)
    assert f"{path}:3: kind: replaced by the facts console, power, firmware and delivery" in str(info.value)
    assert "unknown field" not in str(info.value)


@pytest.mark.parametrize("change,problem", [
    (("power: emulator", "power: pdu"), None),                        # a QEMU board behind a power switch
    (("emulator:\n  cpu: max\n", ""), "delivery: qemu (QEMU's -kernel/-initrd) needs an emulator: block"),
    (("console: serial", "console: adb"), "console: adb (an Android device) needs power: device"),
    (("delivery: qemu", "delivery: tftp"), "delivery: tftp needs firmware that fetches it"),
    (("delivery: qemu", "delivery: fastboot"), "delivery: fastboot is driven over adb/fastboot"),
    (("firmware: none", "firmware: coreboot"), "firmware: must be one of none, u-boot, uefi, abl, rpi"),
])
def test_wiring_facts_must_fit_together(tmp_path, change, problem):
    path = write_board(tmp_path, GOOD.replace(*change))
    if problem is None:
        assert load_board(path).power == "pdu"
        return
    with pytest.raises(ConfigError) as info:
        load_board(path)
    assert problem in str(info.value) and str(path) in str(info.value)


def test_board_facts_reach_the_code_that_owns_them():
    virt, pixel, uboot = load_board("qemu-virt"), load_board("pixel-8"), load_board("qemu-uboot")
    assert (virt.has_console, virt.device_tools, virt.delivery) == (True, False, "qemu")
    assert (pixel.has_console, pixel.device_tools, pixel.delivery) == (False, True, "fastboot")
    assert (uboot.firmware, uboot.delivery, uboot.power, uboot.emulator is not None) == ("u-boot", "tftp", "pdu", True)
