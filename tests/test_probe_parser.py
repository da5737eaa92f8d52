"""The EL probe's output parser, on outputs recorded from real QEMU boards and on broken ones."""

import json
from pathlib import Path

from pkvmlab.facts.probe import PROBES, VM_TYPES, parse_probe_output

FIXTURES = Path(__file__).parent / "fixtures" / "elprobe"
PROTECTED = FIXTURES / "qemu-virt-7.3.4+deb13-arm64-protected-hvhe-qemu-7.2.jsonl"
NVHE = FIXTURES / "qemu-virt-7.2.13+deb14-arm64-nvhe.jsonl"
EL1 = FIXTURES / "qemu-virt-el1-7.2.13+deb14-arm64.jsonl"


def test_recorded_pkvm_run_has_every_probe_for_both_vms():
    run = parse_probe_output(PROTECTED.read_text(), exit_code=0)
    assert run.problem() is None and run.complete
    assert set(run.results) == {(p, v) for p in PROBES for v in VM_TYPES}
    assert run.result("create", "protected").outcome == "ok"
    assert run.result("guest_el", "protected").get("current_el") == 1
    read = run.result("host_read", "protected")
    assert (read.outcome, read.get("signal"), read.get("si_code_name")) == ("fault", "SIGSEGV", "SEGV_ACCERR")
    assert read.describe() == "fault: SIGSEGV SEGV_ACCERR"
    assert run.result("host_read", "normal").get("matches_guest_pattern") is True
    features = run.result("hypercalls", "protected").call("kvm_features")["decoded"]["functions"]
    assert {"HYP_MEMINFO", "MEM_SHARE", "MEM_UNSHARE"} <= set(features)
    assert run.crashed_children() == []


def test_recorded_nvhe_run_reports_the_refusal_with_its_errno():
    run = parse_probe_output(NVHE.read_text(), exit_code=0)
    create = run.result("create", "protected")
    assert (create.outcome, create.get("errno_name")) == ("refused", "EINVAL")
    assert create.describe() == "refused: EINVAL (Invalid argument)"
    assert run.result("host_read", "protected").outcome == "not_run"


def test_no_dev_kvm_is_a_fatal_record_not_a_problem():
    run = parse_probe_output(EL1.read_text(), exit_code=3)
    assert run.fatal["errno_name"] == "ENOENT"
    assert run.problem() is None
    assert run.results == {}


def test_console_noise_between_and_before_records_is_kept_aside():
    lines = PROTECTED.read_text().splitlines()
    noisy = ["\x1b[6nelprobe --timeout 30", lines[0], "[    4.593467] kvm: protected VMs are experimental"]
    noisy += ["\x1b[?25h" + line for line in lines[1:]]
    run = parse_probe_output("\r\n".join(noisy), exit_code=0)
    assert run.problem() is None
    assert len(run.results) == len(PROBES) * len(VM_TYPES)
    assert run.garbage == ["\x1b[6nelprobe --timeout 30", "[    4.593467] kvm: protected VMs are experimental"]


def test_truncated_output_says_it_was_cut_short():
    lines = PROTECTED.read_text().splitlines()
    cut = "\n".join(lines[:6]) + '\n{"record":"result","probe":"hyperc'
    run = parse_probe_output(cut, exit_code=None)
    assert run.summary is None
    assert "ends without a summary" in run.problem()
    assert run.garbage == ['{"record":"result","probe":"hyperc']


def test_garbage_only_says_what_was_printed():
    run = parse_probe_output("sh: elprobe: not found\n", exit_code=127)
    assert run.problem() == "the probe printed no start record (exit code 127): sh: elprobe: not found"


def test_crashed_vm_child_is_reported():
    records = [json.loads(line) for line in PROTECTED.read_text().splitlines()]
    for record in records:
        if record["record"] == "vm_child" and record["vm"] == "protected":
            record.update(status="signaled", signal="SIGSEGV", exit_code=None)
        if record["record"] == "result" and record["vm"] == "protected" and record["probe"] == "teardown":
            record["outcome"] = "crashed"
    run = parse_probe_output("\n".join(json.dumps(r) for r in records), exit_code=0)
    assert run.crashed_children() == ["protected: SIGSEGV"]
    assert run.result("teardown", "protected").describe().startswith("crashed")


def test_non_zero_exit_with_a_summary_is_a_problem():
    run = parse_probe_output(PROTECTED.read_text(), exit_code=139)
    assert run.problem() == "the probe exited with code 139"
