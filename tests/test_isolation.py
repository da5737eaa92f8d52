"""The pvm suite's expectation logic (pkvmlab.isolation) on recorded and altered probe outputs."""

import json
from pathlib import Path

import pytest

from pkvmlab.facts.probe import PROBES, VM_TYPES, parse_probe_output
from pkvmlab.isolation import FAIL, PASS, SKIP, Context, judge, summary_properties

FIXTURES = Path(__file__).parent / "fixtures" / "elprobe"
PROTECTED = FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe-qemu-7.2.jsonl"
FAITHFUL = FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe-qemu-10.0.jsonl"
NVHE = FIXTURES / "qemu-virt-7.2.13+deb14-arm64-nvhe.jsonl"
VHE = FIXTURES / "qemu-virt-7.2.13+deb14-arm64-vhe.jsonl"
EL1 = FIXTURES / "qemu-virt-el1-7.2.13+deb14-arm64.jsonl"

PKVM = Context(kvm_mode="protected-hvhe", kvm_line="kvm [1]: Protected hVHE mode initialized successfully",
               pvm_expected=True, boot_el="EL2")


def load(path, edit=None):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    if edit:
        for record in records:
            edit(record)
    return parse_probe_output("\n".join(json.dumps(r) for r in records), exit_code=0)


def verdicts(ctx, run):
    return {(p, v): judge(p, v, ctx, run) for p in PROBES for v in VM_TYPES}


def test_pkvm_recording_on_qemu_7_2_fails_only_the_teardown_checks():
    # Recorded on QEMU 7.2 (-cpu max, protected hVHE): the emulator artifact shows in both teardown checks.
    result = verdicts(PKVM, load(PROTECTED))
    failing = {key: v.message for key, v in result.items() if v.status != PASS}
    assert sorted(failing) == [("teardown", "protected"), ("teardown_min", "protected")]
    assert "survived teardown" in failing[("teardown", "protected")]
    assert "private_data guest_pattern" in failing[("teardown_min", "protected")]
    assert "SIGSEGV" in result[("host_read", "protected")].message


def test_pkvm_recording_on_qemu_10_passes_everything():
    result = verdicts(PKVM, load(FAITHFUL))
    assert {key: v.message for key, v in result.items() if v.status != PASS} == {}
    assert "private_data zeroed" in result[("teardown_min", "protected")].message


def test_wiped_teardown_passes():
    def wiped(record):
        if record.get("probe") == "teardown" and record["vm"] == "protected":
            record.update(content="zeroed", content_later="zeroed", first_qword="0x0000000000000000")
    verdict = judge("teardown", "protected", PKVM, load(PROTECTED, wiped))
    assert verdict.status == PASS and "zeroed" in verdict.message


def test_host_reading_a_protected_page_is_isolation_broken():
    def readable(record):
        if record.get("probe") == "host_read" and record["vm"] == "protected":
            record.update(outcome="ok", content="guest_pattern", matches_guest_pattern=True,
                          first_qword="0x706b766d454c5052")
    verdict = judge("host_read", "protected", PKVM, load(PROTECTED, readable))
    assert verdict.status == FAIL and "isolation broken" in verdict.message


def test_control_read_that_faults_fails_the_control():
    def faulting(record):
        if record.get("probe") == "host_read" and record["vm"] == "normal":
            record.update(outcome="fault", signal="SIGSEGV", si_code_name="SEGV_ACCERR")
    verdict = judge("host_read", "normal", PKVM, load(PROTECTED, faulting))
    assert verdict.status == FAIL and "control failed" in verdict.message


def test_unknown_smc_reaching_firmware_fails_hypercalls():
    def answered(record):
        if record.get("probe") == "hypercalls" and record["vm"] == "normal":
            for call in record["calls"]:
                if call["name"] == "unknown_sip_smc":
                    call.update(ret=0, x0="0x0000000000000000")
    verdict = judge("hypercalls", "normal", PKVM, load(PROTECTED, answered))
    assert verdict.status == FAIL and "unknown_sip_smc" in verdict.message


def test_missing_pkvm_guest_services_fail_for_the_protected_vm():
    def bare(record):
        if record.get("probe") == "hypercalls" and record["vm"] == "protected":
            for call in record["calls"]:
                if call["name"] == "kvm_features":
                    call["decoded"]["functions"] = ["FEATURES"]
    verdict = judge("hypercalls", "protected", PKVM, load(PROTECTED, bare))
    assert verdict.status == FAIL and "HYP_MEMINFO" in verdict.message


@pytest.mark.parametrize("mode,path", [("nvhe", NVHE), ("vhe", VHE)])
def test_non_pkvm_modes_refuse_pvms_and_claim_no_isolation(mode, path):
    ctx = Context(kvm_mode=mode, pvm_expected=False, boot_el="EL2")
    result = verdicts(ctx, load(path))
    assert result[("create", "protected")].status == PASS
    assert "refuses the protected VM type (refused: EINVAL" in result[("create", "protected")].message
    assert result[("host_read", "normal")].status == PASS
    assert result[("host_read", "protected")].status == SKIP
    assert "KVM_CREATE_VM with the protected type refused: EINVAL" in result[("host_read", "protected")].message


def test_non_pkvm_mode_that_creates_a_protected_vm_fails():
    ctx = Context(kvm_mode="vhe", pvm_expected=False, boot_el="EL2")
    verdict = judge("create", "protected", ctx, load(PROTECTED))
    assert verdict.status == FAIL and "nothing protects" in verdict.message


def test_pkvm_kernel_refusing_pvms_is_a_skip_when_measured_and_a_failure_when_required():
    run = load(NVHE)     # what 6.1/6.12 print in protected mode: the protected type refused with EINVAL
    measured_only = Context(kvm_mode="protected-nvhe", pvm_expected=None, boot_el="EL2")
    create = judge("create", "protected", measured_only, run)
    assert create.status == SKIP and "EINVAL" in create.message
    assert judge("host_read", "protected", measured_only, run).status == SKIP
    required = Context(kvm_mode="protected-nvhe", pvm_expected=True, boot_el="EL2")
    assert judge("create", "protected", required, run).status == FAIL


def test_no_dev_kvm_skips_with_the_boot_reason_unless_pvms_are_expected():
    run = parse_probe_output(EL1.read_text(), exit_code=3)
    ctx = Context(kvm_mode="none", kvm_line="kvm [1]: HYP mode not available", dev_kvm=False,
                  pvm_expected=False, boot_el="EL1")
    verdict = judge("host_read", "protected", ctx, None)
    assert verdict.status == SKIP
    assert verdict.message == "no /dev/kvm: host booted at EL1, KVM mode none (kvm [1]: HYP mode not available)"
    expecting = Context(kvm_mode="none", dev_kvm=False, pvm_expected=True, boot_el="EL1")
    assert judge("create", "protected", expecting, run).status == FAIL


def test_a_probe_that_printed_garbage_fails_every_check():
    run = parse_probe_output("Segmentation fault\n", exit_code=139)
    verdict = judge("create", "normal", PKVM, run)
    assert verdict.status == FAIL and "Segmentation fault" in verdict.message


def test_a_crashed_probe_fails_the_checks_it_did_not_finish():
    def crashed(record):
        if record.get("probe") == "teardown" and record["vm"] == "protected":
            record.clear()
            record.update({"record": "result", "probe": "teardown", "vm": "protected", "outcome": "crashed",
                           "signal": "SIGBUS"})
    verdict = judge("teardown", "protected", PKVM, load(PROTECTED, crashed))
    assert verdict.status == FAIL and "crashed: SIGBUS" in verdict.message


def test_summary_properties_for_the_matrix():
    props = summary_properties(load(PROTECTED))
    assert props["pkvmlab.pvm.create"] == "ok"
    assert props["pkvmlab.pvm.host_read"] == "fault: SIGSEGV SEGV_ACCERR"
    assert props["pkvmlab.pvm.teardown"] == "guest_pattern"
    refused = summary_properties(load(NVHE))
    assert refused["pkvmlab.pvm.create"] == "refused: EINVAL (Invalid argument)"
    assert refused["pkvmlab.pvm.host_read"] == "n/a"
