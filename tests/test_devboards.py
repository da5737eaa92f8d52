"""End to end on the firmware boards (qemu-uboot, qemu-uefi): real QEMU, real U-Boot/EDK2, labgrid's
NetworkSerialPort/SerialDriver, NetworkPowerDriver (simplerest) against our power switch, TFTP.

Each good run is one real boot through firmware (about 15-25 s on 2 shared cores).  The broken
setups check that a failure names its first cause in the error, and leaves no QEMU behind.
"""

import subprocess

import pytest
from boardrun import board_variant, parse_junit, run_board

pytestmark = pytest.mark.qemu


def assert_first_cause(run_dir, start):
    """The boot's error is the lab's, and its one-line message starts with the first cause."""
    _, _, cases = parse_junit(run_dir / "junit.xml")
    error = cases["test_reached_shell"].find("error")
    assert error.get("type") == "pkvmlab.infrastructure", error.get("type")
    assert error.get("message").startswith(start) and "\n" not in error.get("message"), error.get("message")


def qemu_on_port(port):
    out = subprocess.run(["pgrep", "-f", f"tcp:127.0.0.1:{port},server"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.parametrize("board,firmware,serial", [
    ("qemu-uboot", "U-Boot 2023.01", 45901),
    ("qemu-uefi", "EFI v2.7 by EDK II", 45911),
])
def test_firmware_board_boots_pkvm_at_el2(tmp_path, board, firmware, serial):
    proc, run_dir = run_board(tmp_path, board)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    _, props, cases = parse_junit(run_dir / "junit.xml")
    assert props["pkvmlab.boot_el"] == "EL2"
    assert props["pkvmlab.kvm_mode"].startswith("protected-")
    console = (run_dir / "console.log").read_text(errors="replace")
    assert firmware in console                      # the firmware's own output is in the console log
    assert "CPU: All CPU(s) started at EL2" in console
    assert "Protected hVHE mode initialized successfully" in console
    if board == "qemu-uboot":
        assert "Bytes transferred = " in console      # kernel and initrd came over TFTP
    assert cases["test_kvm_mode"].find("failure") is None
    assert not qemu_on_port(serial), "QEMU outlived the run"


def test_qemu_error_at_power_on_is_named(tmp_path):
    board = board_variant(tmp_path, "qemu-uboot", {}, env_replace={"-no-reboot": "-no-reboot -bogus-flag"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's power switch / QEMU
    text = proc.stdout + proc.stderr
    assert "power on failed" in text and "-bogus-flag" in text, text[-3000:]
    assert_first_cause(run_dir, "power on failed: ")
    assert not qemu_on_port(45901)


def test_missing_tftp_file_is_named(tmp_path):
    board = board_variant(tmp_path, "qemu-uboot", {}, env_replace={"tftpboot ${ramdisk_addr_r} initramfs":
                                                                    "tftpboot ${ramdisk_addr_r} no-such-file"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's TFTP server
    assert_first_cause(run_dir, "TFTP failed: ")
    assert not qemu_on_port(45901)


def test_serial_server_refusing_is_named(tmp_path):
    # The console points at a port nothing serves: the SerialDriver cannot connect.
    board = board_variant(tmp_path, "qemu-uefi", {}, env_replace={"port: 45911\n        speed":
                                                                   "port: 45919\n        speed"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's serial server
    assert_first_cause(run_dir, "console 127.0.0.1:45919 did not open: ")
    assert not qemu_on_port(45911)
