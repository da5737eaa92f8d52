"""Who holds EL2, through the real parser (pkvmlab.facts.console.parse_boot_log).

The EL1 log is a real capture from the qemu-virt-el1 board.  The Gunyah and
GenieZone logs are that capture with the firmware lines a Snapdragon / Dimensity
board prints spliced in (synthesised: no such board here); the lines are the
signatures cited in pkvmlab/facts/el2holder.py.
"""

from pathlib import Path

from pkvmlab.facts.console import parse_boot_log
from pkvmlab.isolation import Context, precondition

FIXTURES = Path(__file__).parent / "fixtures" / "console"
EL1_LOG = (FIXTURES / "qemu-virt-el1-7.3.4+deb13-arm64-protected.log").read_text()
GUNYAH_BANNER = "Hypervisor cold boot, version: gunyah-e78adb36e debug (2024-03-01)"
GUNYAH_RESERVED = ("[    0.000000] OF: reserved mem: 0x0000000080000000..0x00000000805fffff (6144 KiB) "
                   "nomap non-reusable gunyah-hyp@80000000")
GENIEZONE = ("[    0.000000] OF: reserved mem: 0x000000007c000000..0x000000007fffffff (65536 KiB) "
             "nomap non-reusable geniezone@7c000000")


def test_qemu_virt_el1_has_no_el2_at_all():
    facts = parse_boot_log(EL1_LOG)
    assert facts.boot_el == "EL1"
    assert facts.el2_holder.name is None
    assert facts.el2_summary == "no EL2 (no firmware hypervisor seen)"


def test_gunyah_banner_names_the_holder_with_its_line():
    facts = parse_boot_log(GUNYAH_BANNER + "\n" + EL1_LOG)
    assert facts.boot_el == "EL1"
    assert facts.el2_summary == f"EL2 held by Gunyah (evidence: {GUNYAH_BANNER})"
    assert facts.evidence["el2_holder"] == 1


def test_gunyah_reserved_memory_node_alone_is_enough():
    lines = EL1_LOG.splitlines()
    facts = parse_boot_log("\n".join(lines[:3] + [GUNYAH_RESERVED] + lines[3:]))
    assert facts.el2_holder.name == "Gunyah"
    assert "gunyah-hyp@80000000" in facts.el2_holder.evidence
    assert facts.evidence["el2_holder"] == 4


def test_geniezone():
    facts = parse_boot_log(GENIEZONE + "\n" + EL1_LOG)
    assert facts.el2_summary.startswith("EL2 held by GenieZone (evidence: OF: reserved mem:")


def test_linux_at_el2_has_no_summary_even_with_a_mention():
    facts = parse_boot_log((FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe.log").read_text())
    assert facts.boot_el == "EL2"
    assert facts.el2_summary is None


def test_pvm_skip_reason_carries_the_holder():
    facts = parse_boot_log(GUNYAH_BANNER + "\n" + EL1_LOG)
    ctx = Context(kvm_mode=facts.kvm_mode, kvm_line=facts.kvm_line, dev_kvm=False, boot_el=facts.boot_el,
                  el2=facts.el2_summary)
    verdict = precondition(ctx, None)
    assert "EL2 held by Gunyah (evidence: Hypervisor cold boot" in str(verdict)


# XBL's own UART log lines (format "<B|D> - <microseconds> - <message>"), as public XBL logs of
# SM8250-family devices show them; the message is QHEE_BOOT_LOG_STR of Qualcomm's XBL loader.
XBL_QHEE = "D -     15708 - QHEE Image Loaded, Delta - (440120 Bytes)"


def test_xbl_qhee_line_names_qhee():
    facts = parse_boot_log("B -   1123040 - QHEE Image Load, Start\n" + XBL_QHEE + "\n" + EL1_LOG)
    assert facts.el2_holder.name == "QHEE"
    assert facts.el2_summary == f"EL2 held by QHEE (evidence: {XBL_QHEE})"


def test_gunyah_line_wins_over_the_xbl_qhee_line():
    # Gunyah-era XBLs load the hypervisor from the same partition and may log the QHEE line first.
    lines = EL1_LOG.splitlines()
    facts = parse_boot_log("\n".join([XBL_QHEE] + lines[:3] + [GUNYAH_RESERVED] + lines[3:]))
    assert facts.el2_holder.name == "Gunyah" and "gunyah-hyp@80000000" in facts.el2_holder.evidence


def test_crosvm_log_from_a_gunyah_tablet_names_gunyah():
    # Real excerpt: crosvm on a Galaxy Tab S9 Ultra (Snapdragon 8 Gen 2), quoted in
    # https://github.com/quic/gunyah-hypervisor/issues/24 (crosvm's own debug line, as AVF's logcat shows it).
    line = ("[2024-03-23T00:49:49.736413214+05:30 DEBUG crosvm::crosvm::sys::unix] "
            "creating hypervisor: Gunyah { device: Some(\"/dev/gunyah\") }")
    facts = parse_boot_log(EL1_LOG + "\n" + line + "\n")
    assert facts.el2_holder.name == "Gunyah" and facts.el2_holder.evidence == line


def test_getprop_format_and_a_bare_geniezone_word():
    from pkvmlab.facts.el2holder import find_el2_holder
    assert find_el2_holder(["[ro.boot.hypervisor.version]: [gunyah-1.2]"]).name == "Gunyah"
    assert find_el2_holder(["[ro.boot.hypervisor.version]: [geniezone]"]).name == "GenieZone"
    # A kernel release or a path that merely contains the word is not evidence.
    assert find_el2_holder(["Linux version 6.1.99-android14-geniezone (build@host)"]).name is None
