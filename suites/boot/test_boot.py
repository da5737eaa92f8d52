"""The boot suite: did the board boot the kernel we gave it, at the EL and KVM mode its file expects?

Every fact comes from the kernel's own log or the running system (see
pkvmlab.facts.console); every assertion message says expected vs measured.
"""

import re

import pytest


def test_reached_shell(booted, measured):
    lines, code = booted.run("echo pkvmlab-shell-$((6*7))")
    assert code == 0 and lines == ["pkvmlab-shell-42"], f"shell answered {lines!r} (exit {code})"
    if booted.boot_seconds is not None:
        measured("boot_seconds", f"{booted.boot_seconds:.3f}")


def test_kernel_release_is_provisioned(booted, measured):
    running = booted.runtime.release
    measured("running", running)
    provisioned = booted.provisioned.kernel_release if booted.provisioned else None
    if provisioned is None:
        # A board that boots its own kernel (a phone's stock image): compare with the boot log instead.
        provisioned = booted.facts.kernel_release
    assert running == provisioned, f"running kernel {running!r}, provisioned {provisioned!r}"


def test_kernel_command_line_is_ours(booted):
    cmdline = booted.runtime.cmdline or ""
    for word in booted.board.kernel_args.split():
        assert word in cmdline.split(), f"kernel argument {word!r} missing from /proc/cmdline: {cmdline!r}"


def test_boot_el(booted, board, measured):
    measured("boot_el", booted.facts.boot_el)
    said = booted.facts.boot_el or "nothing (no 'CPU: All CPU(s) started at' line)"
    assert booted.facts.boot_el == board.expect.boot_el, (
        f"expected every CPU to start at {board.expect.boot_el}, the kernel says {said}")


def test_firmware(booted, board, measured):
    """The firmware the board file names is the one the console shows booting the kernel."""
    if booted.console_log is None:
        pytest.skip("no console to read a firmware banner from (the device is reached over adb only)")
    seen = booted.facts.firmware
    measured("firmware", seen.describe())
    if board.firmware in ("u-boot", "uefi"):
        want = {"u-boot": "U-Boot", "uefi": "UEFI"}[board.firmware]
        assert seen.name == want, f"board file says firmware: {board.firmware}; the console shows {seen.describe()}"
    elif board.firmware == "none":
        assert seen.name is None, f"board file says firmware: none (direct kernel boot); the console shows " \
                                  f"{seen.describe()}: {seen.evidence[0]}"
    else:
        pytest.skip(f"firmware {board.firmware} prints no banner pkvmlab reads; measured: {seen.describe()}")


def test_el2_holder(booted, board, measured):
    """Linux at EL1: who holds EL2, with the firmware's own line (or 'no EL2')."""
    facts = booted.facts
    measured("el2", facts.el2_summary or "Linux")
    if board.expect.el2_holder is None:
        pytest.skip(f"board file sets no expect.el2_holder; measured: {facts.el2_summary or 'Linux has EL2'}")
    got = facts.el2_holder.name or ("none" if facts.boot_el != "EL2" else "Linux")
    assert got == board.expect.el2_holder, (
        f"expected EL2 held by {board.expect.el2_holder}, measured: {facts.el2_summary or 'Linux has EL2'}")


def test_kvm_mode(booted, board, measured):
    facts = booted.facts
    measured("kvm_mode", facts.kvm_mode)
    if facts.pkvm_fallback:
        measured("pkvm_fallback", "Protected KVM not available with VHE")
    assert board.expect.kvm_mode_matches(facts.kvm_mode), (
        f"expected KVM mode {board.expect.kvm_mode}, measured {facts.kvm_mode} "
        f"(line: {facts.kvm_line!r}; kvm-arm.mode={facts.kvm_arm_mode}"
        f"{'; the kernel fell back: Protected KVM not available with VHE' if facts.pkvm_fallback else ''})")


def test_no_kernel_problems(booted, measured):
    facts = booted.facts
    if facts.benign:
        measured("benign_lines", "; ".join(f"{p.text} ({why})" for p, why in facts.benign))
    problems = [f"line {p.line_number}: {p.kind}: {p.text}" for p in facts.problems]
    assert not problems, "the kernel reported problems:\n" + "\n".join(problems)


def test_dev_kvm_matches_el2(booted, board, measured):
    dev_kvm = booted.runtime.dev_kvm
    measured("dev_kvm", dev_kvm)
    kvm_up = booted.facts.boot_el == "EL2" and booted.facts.kvm_mode not in (None, "none")
    assert dev_kvm == kvm_up, (
        f"/dev/kvm {'present' if dev_kvm else 'absent'} but the kernel booted at {booted.facts.boot_el} "
        f"with KVM mode {booted.facts.kvm_mode}")
    assert dev_kvm == board.expect.dev_kvm, (
        f"expected /dev/kvm {'present' if board.expect.dev_kvm else 'absent'}, measured "
        f"{'present' if dev_kvm else 'absent'}")


def test_machine_is_arm64(booted):
    assert re.fullmatch(r"aarch64|arm64", booted.runtime.machine or ""), f"uname -m says {booted.runtime.machine!r}"
