"""The console-log parser on real logs captured from QEMU runs (tests/fixtures/console/)."""

from pathlib import Path

import pytest

from pkvmlab.facts.console import clean_line, excerpt, parse_boot_log

FIXTURES = Path(__file__).parent / "fixtures" / "console"

# file -> (boot EL, KVM mode, kvm-arm.mode asked, fell back from protected)
EXPECTED = {
    "qemu-virt-7.3.4+deb13-arm64-protected-hvhe.log": ("EL2", "protected-hvhe", "protected", False),
    "qemu-virt-a72-7.3.4+deb13-arm64-protected-nvhe.log": ("EL2", "protected-nvhe", "protected", False),
    "qemu-virt-7.3.4+deb13-arm64-nvhe.log": ("EL2", "nvhe", "nvhe", False),
    "qemu-virt-7.3.4+deb13-arm64-vhe.log": ("EL2", "vhe", "default", False),
    "qemu-virt-7.3.4+deb13-arm64-protected-hvhe0-fallback.log": ("EL2", "vhe", "protected", True),
    "qemu-virt-el1-7.3.4+deb13-arm64-protected.log": ("EL1", "none", "protected", False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_logs(name):
    facts = parse_boot_log((FIXTURES / name).read_text())
    assert facts.kernel_release == "7.3.4+deb13-arm64"
    assert (facts.boot_el, facts.kvm_mode, facts.kvm_arm_mode, facts.pkvm_fallback) == EXPECTED[name]
    assert facts.problems == []


def test_qemu_timer_warning_is_benign_not_a_problem():
    facts = parse_boot_log((FIXTURES / "qemu-virt-7.3.4+deb13-arm64-vhe.log").read_text())
    assert len(facts.benign) == 1 and "Firmware Bug" in facts.benign[0][0].text
    assert "emulator" in facts.benign[0][1]


def test_panic_oops_bug_warning_found_with_line_numbers():
    base = (FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe.log").read_text().splitlines()
    injected = base[:100] + [
        "[    1.000000] WARNING: CPU: 1 PID: 1 at arch/arm64/kvm/arm.c:123 kvm_arch_init+0x10/0x20",
        "[    1.100000] Unable to handle kernel access to hypervisor-protected memory at virtual address 0",
        "[    1.200000] kernel BUG at mm/slub.c:42!",
        "[    1.300000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100",
    ] + base[100:]
    facts = parse_boot_log("\n".join(injected))
    kinds = [(p.kind, p.line_number) for p in facts.problems]
    assert kinds == [("warning", 101), ("oops", 102), ("bug", 103), ("panic", 104)]


def test_old_kernel_wording_and_mixed_el():
    log = "\n".join([
        "[    0.0] Linux version 6.1.0-50-arm64 (debian-kernel@lists.debian.org)",
        "[    0.1] CPU: CPUs started in inconsistent modes",
        "[    0.2] kvm [1]: Hyp mode initialized successfully",
    ])
    facts = parse_boot_log(log)
    assert (facts.kernel_release, facts.boot_el, facts.kvm_mode) == ("6.1.0-50-arm64", "mixed", "nvhe")


def test_success_line_wins_over_not_available():
    log = "kvm [1]: HYP mode not available\nkvm [1]: Protected nVHE mode initialized successfully\n"
    assert parse_boot_log(log).kvm_mode == "protected-nvhe"
    assert parse_boot_log("KVM is not available. Ignoring kvm-arm.mode\n").kvm_mode == "none"


def test_clean_line_strips_escapes_and_timestamps():
    assert clean_line("\x1b[6n[   12.345678] kvm [1]: x\r\n") == "kvm [1]: x"


def test_el1_board_quotes_the_kvm_line_that_says_why():
    facts = parse_boot_log((FIXTURES / "qemu-virt-el1-7.3.4+deb13-arm64-protected.log").read_text())
    assert facts.kvm_line == "kvm [1]: HYP mode not available"


def test_excerpt_shows_the_evidence_lines_and_the_end():
    text = (FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe.log").read_text()
    facts = parse_boot_log(text)
    lines, note = excerpt(text, around=facts.evidence.values(), context=1, last=2)
    assert any("CPU: All CPU(s) started at EL2" in line for line in lines)
    assert any("Protected hVHE mode initialized successfully" in line for line in lines)
    assert lines.count("[...]") >= 2 and len(lines) <= 3 + 3 + 2 + 3
    assert note.startswith(f"lines around {min(facts.evidence.values())}, ")
    assert note.endswith(f"the last 2 of {len(text.splitlines())} lines")
