"""End to end on the firmware boards (qemu-uboot, qemu-uefi): real QEMU, real U-Boot/EDK2, labgrid's
NetworkSerialPort/SerialDriver, NetworkPowerDriver (simplerest) against our power switch, TFTP.

Each good run is one real boot through firmware (about 15-25 s on 2 shared cores).  The broken
setups check that a failure names its first cause in the error, and leaves no QEMU behind.
"""

import re
import subprocess
from pathlib import Path

import pytest
from boardrun import board_variant, parse_junit, run_board, start_run

pytestmark = pytest.mark.qemu


def assert_first_cause(run_dir, start):
    """The boot's error is the lab's, and its one-line message starts with the first cause."""
    _, _, cases = parse_junit(run_dir / "junit.xml")
    error = cases["test_reached_shell"].find("error")
    assert error.get("type") == "pkvmlab.infrastructure", error.get("type")
    assert error.get("message").startswith(start) and "\n" not in error.get("message"), error.get("message")


def serial_port_of(run_dir):
    """The loopback port the run's console used (picked per run), read from the harness log."""
    text = (run_dir / "harness.log").read_text(errors="replace")
    match = re.search(r"-serial tcp:127\.0\.0\.1:(\d+),server", text)
    assert match, "the power switch logged no QEMU command line"
    return int(match.group(1))


def qemu_on_port(port):
    out = subprocess.run(["pgrep", "-f", f"tcp:127.0.0.1:{port},server"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.parametrize("board,firmware,want_firmware,package,delivery", [
    ("qemu-uboot", "U-Boot 2023.01", "U-Boot 2023.01", "u-boot-qemu", "tftp"),
    ("qemu-uefi", "EFI v2.7 by EDK II", "EDK II (UEFI 2.7)", "qemu-efi-aarch64", "qemu"),
])
def test_firmware_board_boots_pkvm_at_el2(tmp_path, board, firmware, want_firmware, package, delivery):
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
    assert cases["test_firmware"].find("failure") is None and cases["test_firmware"].find("skipped") is None
    assert props["pkvmlab.firmware"].startswith(want_firmware), props["pkvmlab.firmware"]
    assert props["pkvmlab.firmware_package"].startswith(package + " "), props.get("pkvmlab.firmware_package")
    assert props["pkvmlab.image_delivery"] == delivery
    assert re.fullmatch(r"NetworkSerialPort 127\.0\.0\.1:\d+ raw", props["pkvmlab.console_resource"])
    serial = serial_port_of(run_dir)
    assert serial not in (45901, 45911), "fixed port: two runs at once would collide"
    assert not qemu_on_port(serial), "QEMU outlived the run"


def test_qemu_error_at_power_on_is_named(tmp_path):
    board = board_variant(tmp_path, "qemu-uboot", {}, env_replace={"-no-reboot": "-no-reboot -bogus-flag"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's power switch / QEMU
    text = proc.stdout + proc.stderr
    assert "power on failed" in text and "-bogus-flag" in text, text[-3000:]
    assert_first_cause(run_dir, "power on failed: ")
    assert not qemu_on_port(serial_port_of(run_dir))


def test_missing_tftp_file_is_named(tmp_path):
    board = board_variant(tmp_path, "qemu-uboot", {}, env_replace={"tftpboot ${ramdisk_addr_r} initramfs":
                                                                    "tftpboot ${ramdisk_addr_r} no-such-file"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's TFTP server
    assert_first_cause(run_dir, "TFTP failed: ")
    assert not qemu_on_port(serial_port_of(run_dir))


def test_serial_server_refusing_is_named(tmp_path):
    # The console points at a port nothing serves: the SerialDriver cannot connect.
    board = board_variant(tmp_path, "qemu-uefi", {}, env_replace={"port: 0       #": "port: 45919   #"})
    proc, run_dir = run_board(tmp_path, board, "suites/boot", "-k", "reached_shell")
    assert proc.returncode == 11, proc.stdout[-3000:]     # infrastructure: the lab's serial server
    assert_first_cause(run_dir, "console 127.0.0.1:45919 did not open: ")
    assert not qemu_on_port(serial_port_of(run_dir))


def test_two_runs_of_one_bench_board_at_once(tmp_path):
    # Ports and the TFTP directory are the run's own: two runs of qemu-uboot at once both boot
    # their own kernel over their own console (fixed ports made the second fail "already taken").
    runs = [start_run(tmp_path, "suites/boot", "-k", "reached_shell or kvm_mode", board="qemu-uboot",
                      run_id=f"twin{n}") for n in (1, 2)]
    outputs = [run.communicate(timeout=240)[0] for run in runs]
    for run, out in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out[-3000:]
    ports = {serial_port_of(tmp_path / f"twin{n}") for n in (1, 2)}
    assert len(ports) == 2, ports
    tftp = {re.search(r"tftp=(\S+?),?\s", (tmp_path / f"twin{n}" / "harness.log").read_text()).group(1)
            for n in (1, 2)}
    assert len(tftp) == 2 and not any(Path(d).exists() for d in tftp), tftp    # each its own, removed after
