"""The pvm suite: does the hypervisor keep a protected VM's memory from the host?

One run of the EL probe (``images/elprobe``, a minimal VMM on ``/dev/kvm``) per
session; one test per probe and VM type.  What each result must be follows from
the KVM mode the kernel printed and the board's ``pvm`` expectation
(``pkvmlab.isolation``): a skip carries the measured reason, a failure says
expected vs measured.  The normal VM is the control: its page must be readable
by the host, or the probe could not see a leak at all.
"""

import pytest

from pkvmlab.facts.probe import VM_TYPES
from pkvmlab.isolation import FAIL, SKIP, judge
from pkvmlab.report.cases import Finding


@pytest.fixture
def check(request, board, pkvmlab_run, isolation_context, probe_run, measured):
    """check(probe, vm): judge one probe on one VM type; its measured values become properties.

    A failure the board file lists under ``expect.emulator_artifacts``, on an emulator
    and KVM mode where that artifact was measured, is the emulator's, not the board's:
    xfail "emulator artifact" with both outcomes.  A failure it lists under
    ``expect.known_findings`` is a waived finding with its reason, reference and the measured
    values (``pkvmlab.report.cases``); under ``--strict-findings`` it fails.
    """
    emulator = pkvmlab_run.emulator
    def judge_one(probe, vm):
        result = probe_run.result(probe, vm) if probe_run is not None else None
        if result is not None:
            measured("outcome", result.describe())
        verdict = judge(probe, vm, isolation_context, probe_run)
        if verdict.status == SKIP:
            pytest.skip(verdict.message)
        if verdict.status == FAIL and emulator is not None:
            artifact = board.expect.emulator_artifact(probe, vm, emulator.version, isolation_context.kvm_mode)
            if artifact is not None:
                measured("emulator_artifact", artifact.scope)
                finding = Finding("artifact", f"emulator artifact, not the board's ({artifact.scope}; "
                                  f"{artifact.reason})", artifact.reference,
                                  f"on {emulator.version_line}, {isolation_context.kvm_mode}: {verdict.message}")
                pkvmlab_run.findings[request.node.nodeid] = finding
                pytest.xfail(finding.message)
            known = board.expect.artifact_for(probe, vm)
            if known is not None:
                verdict = type(verdict)(FAIL, f"{verdict.message} [not explained by the emulator: the known "
                                              f"artifact is {known.scope}, this run is {emulator.label}, "
                                              f"{isolation_context.kvm_mode}]")
        if verdict.status == FAIL and board.expect.known_finding(probe, vm):
            finding = Finding("finding", f"known finding on {board.name}: {board.expect.known_finding(probe, vm)}",
                              board.expect.finding_reference(probe, vm), verdict.message,
                              strict=pkvmlab_run.strict_findings)
            pkvmlab_run.findings[request.node.nodeid] = finding
            if finding.strict:      # the plugin types it pkvmlab.finding.waived, class board
                pytest.fail(f"{finding.message}; measured: {verdict.message}", pytrace=False)
            pytest.xfail(finding.message)
        assert verdict.status != FAIL, verdict.message
        return result
    return judge_one


def test_probe_completed(isolation_context, probe_run, probe_precondition, measured):
    """The probe ran to its summary, and no VM process crashed or overran its time limit."""
    if probe_precondition is not None:
        if probe_precondition.status == SKIP:
            pytest.skip(probe_precondition.message)
        pytest.fail(probe_precondition.message)
    measured("duration_ms", probe_run.summary.get("duration_ms"))
    measured("probe_version", probe_run.start.get("probe_version"))
    crashed = probe_run.crashed_children()
    assert not crashed, f"probe VM processes did not end cleanly: {', '.join(crashed)}"


@pytest.mark.parametrize("vm", VM_TYPES)
def test_create(vm, check, measured):
    result = check("create", vm)
    measured("vm_type", result.get("vm_type"))


@pytest.mark.parametrize("vm", VM_TYPES)
def test_guest_el(vm, check, measured):
    result = check("guest_el", vm)
    measured("current_el", f"EL{result.get('current_el')}")


@pytest.mark.parametrize("vm", VM_TYPES)
def test_host_read(vm, check, measured):
    result = check("host_read", vm)
    if result.outcome == "fault":
        measured("signal", f"{result.get('signal')} {result.get('si_code_name')}")
    else:
        measured("first_qword", result.get("first_qword"))


@pytest.mark.parametrize("vm", VM_TYPES)
def test_hypercalls(vm, check, measured):
    result = check("hypercalls", vm)
    for name in ("smccc_version", "kvm_features", "hyp_meminfo", "unknown_sip_smc"):
        call = result.call(name)
        if call is not None:
            measured(name, call.get("ret_name") or call.get("decoded") or call.get("x0"))


@pytest.mark.parametrize("vm", VM_TYPES)
def test_teardown_min(vm, check, measured):
    """The smallest reproducer: a fresh VM writes one page and exits; after destroy the host re-reads it."""
    result = check("teardown_min", vm)
    for key in ("private_data", "private_code", "shared_data", "shared_code"):
        measured(key, result.get(key))


@pytest.mark.parametrize("vm", VM_TYPES)
def test_teardown(vm, check, measured):
    result = check("teardown", vm)
    measured("content_after_teardown", result.get("content"))
    measured("content_later", result.get("content_later"))
    measured("code_page_after_teardown", result.get("code_page"))
