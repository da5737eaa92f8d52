"""Fixtures of the pvm suite: the EL probe run once per session on the booted board.

The probe's raw output is kept as ``<run dir>/elprobe.jsonl`` (the evidence), and
its headline values (protected VM created? host read of its page?) become
testsuite properties that the matrix table and the HTML report show.
"""

import shlex

import pytest

from pkvmlab.facts.probe import parse_probe_output
from pkvmlab.isolation import Context, precondition, summary_properties

PROBE_TIMEOUT = 30          # seconds the probe gives each VM before it kills it (its --timeout)
PROBE_WALL_TIMEOUT = 150    # seconds the harness waits for the whole probe (two VMs + teardown, TCG)
OUTPUT_MARK = "pkvmlab-probe-output:"


def probe_output(lines):
    """The lines after the last OUTPUT_MARK line (what the board printed before it is the kernel's)."""
    for at in range(len(lines) - 1, -1, -1):
        if lines[at].strip() == OUTPUT_MARK:
            return lines[at + 1:]
    return lines


@pytest.fixture(scope="session")
def isolation_context(booted, board):
    facts = booted.facts
    return Context(kvm_mode=facts.kvm_mode or "unknown", kvm_line=facts.kvm_line or "",
                   dev_kvm=bool(booted.runtime.dev_kvm), pvm_expected=board.expect.pvm, boot_el=facts.boot_el,
                   el2=facts.el2_summary)


@pytest.fixture(scope="session")
def probe_run(booted, isolation_context, pkvmlab_run, suite_property):
    """The probe's parsed output, or None when the board has no /dev/kvm (nothing to probe)."""
    if not isolation_context.dev_kvm:
        return None
    probe = booted.install_probe()
    out = f"{booted.work_dir}/elprobe.jsonl"
    # Output goes to a file first: kernel messages printed on the console while the
    # probe runs (e.g. the pVM taint notice) cannot then split a JSON line.  The file is
    # printed after OUTPUT_MARK in the same command (one round trip on the console, not
    # two); the command's exit code is the probe's.
    lines, code = booted.run(f"{shlex.quote(probe)} --timeout {PROBE_TIMEOUT} > {out} 2>&1; code=$?; "
                             f"echo {OUTPUT_MARK}; cat {out}; exit $code", timeout=PROBE_WALL_TIMEOUT)
    text = "\n".join(probe_output(lines)) + "\n"
    (pkvmlab_run.run_dir / "elprobe.jsonl").write_text(text)
    run = parse_probe_output(text, exit_code=code)
    props = summary_properties(run)
    props["pkvmlab.pvm.probe_exit"] = str(code)
    for name, value in props.items():
        suite_property(name, value)
    return run


@pytest.fixture(scope="session")
def probe_precondition(isolation_context, probe_run):
    return precondition(isolation_context, probe_run)
