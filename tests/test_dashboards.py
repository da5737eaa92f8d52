"""Dashboards read it right: identity, findings and measured values as GitLab/Allure/junit2html see them.

Real runs of the QEMU board (boot + pvm suites), read back with junitparser and checked against
Jenkins' junit-10.xsd (the tests' own copy):

* ``single``: ``pkvmlab run --board qemu-virt``;
* ``cell``: the same board run as a matrix cell runs it (``--kernel-suite trixie-backports --kvm-mode
  protected``): it must give the same (classname, name) keys;
* ``finding`` and ``strict``: a copy of the board file that lists ``teardown_min/protected`` as a known
  finding (with a reference) and no longer as an emulator artifact, run on the host's QEMU 7.2, where
  the protected guest's page survives teardown (README, "Known emulator artifacts"): waived, then
  with PKVMLAB_STRICT_FINDINGS=1 failing;
* ``matrix``: ``pkvmlab matrix --kernels trixie-backports --modes protected --qemu host,auto`` (with
  the host's QEMU 7.x): the merged file keeps the single run's keys for the board's own emulator, the
  host's cell is a combination of its own, and its emulator artifacts are findings there too.
"""

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xmlschema
from boardrun import board_variant
from junitparser import Failure, JUnitXml, Skipped

from pkvmlab.images.emulator import query_version
from pkvmlab.report.identity import identity_prefix
from pkvmlab.report.merge import merge_junit

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))
SUITES = [str(ROOT / "suites" / "boot"), str(ROOT / "suites" / "pvm")]
pytestmark = pytest.mark.qemu

FINDING_REASON = "the protected guest's page survives teardown under protected hVHE"
FINDING_REFERENCE = "https://example.invalid/lab/issues/42"


def pkvmlab(*args, env=None, timeout=400):
    return subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def said(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _old_qemu():
    """The host's QEMU version when it is 7.x (where protected hVHE leaks at teardown), else None."""
    binary = shutil.which("qemu-system-aarch64")
    if binary is None:
        return None
    try:
        version, _ = query_version(binary)
    except Exception:   # noqa: BLE001 - a host QEMU that cannot run: the finding runs are skipped
        return None
    return version if version.startswith("7.") else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    reports = root / "reports"
    variant = board_variant(root, "qemu-virt", {
        'qemu_min_version: "10.0"': 'qemu_min_version: "7.0"',
        'qemu_below: "10.0"': 'qemu_below: "7.0"',      # QEMU 7.2's leak is no longer explained away ...
        "  emulator_artifacts:\n": (                    # ... the board file waives it as a known finding
            "  known_findings:\n"
            "    teardown_min/protected:\n"
            f"      reason: {FINDING_REASON}\n"
            f"      reference: {FINDING_REFERENCE}\n"
            f"    teardown/protected: {FINDING_REASON}\n"     # no reference: the board file entry is named
            "  emulator_artifacts:\n"),
    })
    old = _old_qemu()

    def run(run_id, *extra, env=None):
        return pkvmlab("run", "--board", *extra, "--reports", str(reports), "--run-id", run_id, *SUITES,
                       "-p", "no:cacheprovider", env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = {"single": pool.submit(run, "single", "qemu-virt"),
                "cell": pool.submit(run, "cell", "qemu-virt", "--kernel-suite", "trixie-backports",
                                    "--kvm-mode", "protected")}
        if old is not None:
            jobs["finding"] = pool.submit(run, "finding", str(variant), "--qemu", "host")
            jobs["strict"] = pool.submit(run, "strict", str(variant), "--qemu", "host",
                                         env={"PKVMLAB_STRICT_FINDINGS": "1"})
        procs = {name: job.result() for name, job in jobs.items()}
    if old is not None:
        procs["matrix"] = pkvmlab("matrix", "--kernels", "trixie-backports", "--modes", "protected",
                                  "--qemu", "host,auto", "--reports", str(reports / "m"))
    return {"root": root, "reports": reports, "procs": procs, "old_qemu": old}


def junit(runs, name):
    proc = runs["procs"].get(name)
    if proc is None:
        pytest.skip("the host's qemu-system-aarch64 is not QEMU 7.x (the teardown leak the finding needs)")
    if name == "matrix":
        (path,) = (runs["reports"] / "m").glob("matrix-*/junit.xml")
    else:
        path = runs["reports"] / name / "junit.xml"
    assert path.is_file(), said(proc)
    SCHEMA.validate(str(path))
    return path, proc


def cases(path):
    return [(suite, case) for suite in JUnitXml.fromfile(str(path)) for case in suite]


def props(suite):
    return {p.name: p.value for p in suite.properties()}


def keys(path):
    return [(case.classname, case.name) for _, case in cases(path)]


def test_classnames_carry_board_and_mode(runs):
    path, proc = junit(runs, "single")
    assert proc.returncode == 0, said(proc)
    (suite,) = JUnitXml.fromfile(str(path))
    p = props(suite)
    prefix = identity_prefix("qemu-virt", "protected", cpu=p["pkvmlab.cpu"])
    assert prefix == "qemu-virt.protected.max" and p["pkvmlab.identity"] == prefix
    classnames = {case.classname for case in suite}
    assert classnames == {f"{prefix}.suites.boot.test_boot", f"{prefix}.suites.pvm.test_isolation"}
    # No kernel version in the identity: a kernel upgrade keeps each check's history.
    assert all(p["pkvmlab.kernel_release"] not in c for c in classnames)
    assert len(keys(path)) == len(set(keys(path)))


def test_a_matrix_cell_and_merges_keep_the_same_keys(runs, tmp_path):
    single, _ = junit(runs, "single")
    cell, proc = junit(runs, "cell")
    assert proc.returncode == 0, said(proc)
    assert keys(cell) == keys(single)
    merged = tmp_path / "lab" / "junit.xml"
    result = merge_junit([single, cell], merged)
    assert result.exit_code == 0, result.notes
    SCHEMA.validate(str(merged))
    first, second = JUnitXml.fromfile(str(merged))
    assert first.name != second.name      # two runs of one combination: the second suite is renamed ...
    assert [(c.classname, c.name) for c in first] == [(c.classname, c.name) for c in second] == keys(single)
    again = tmp_path / "again.xml"      # ... and a merge of a merge (a matrix file) keeps them too
    assert merge_junit([merged], again).exit_code == 0
    assert keys(again) == keys(merged)


def test_measured_values_are_in_each_cases_system_out(runs):
    path, _ = junit(runs, "single")
    (suite,) = JUnitXml.fromfile(str(path))
    p = props(suite)
    checked = 0
    for case in suite:
        values = {name[len(case.name) + 1:]: value for name, value in p.items()
                  if name.startswith(f"{case.name}.") and not name.endswith(".console_log")}
        for key, value in values.items():
            assert f"{key} = {' '.join(value.split())}" in (case.system_out or ""), (case.name, key)
            checked += 1
    assert checked >= 30, checked
    create = next(c for c in suite if c.name == "test_create[protected]")
    assert "outcome = ok" in create.system_out and "vm_type = 0x0000000080000000" in create.system_out


def test_no_property_is_an_absolute_host_path(runs):
    for name in ("single", "cell"):
        path, _ = junit(runs, name)
        (suite,) = JUnitXml.fromfile(str(path))
        absolute = {n: v for n, v in props(suite).items() if os.path.isabs(v or "") or "/root/" in (v or "")
                    or str(runs["root"]) in (v or "")}
        assert not absolute, absolute
        p = props(suite)
        assert p["IMAGE_KERNEL"].startswith("$PKVMLAB_CACHE/")
        assert p["ENV_CONFIG"] == "$PKVMLAB_ROOT/envs/qemu-virt.yaml"


# The two checks the board file waives, with the reference each cites.  QEMU 7.2 leaks at teardown on
# most boots, not all: of 10 protected hVHE boots on QEMU 7.2.22 on 2026-12-03, teardown_min passed on
# 2, teardown on 3, both on 1.  Each test checks whichever of them the boot reproduced; a boot that
# reproduced neither has no finding to show, and the test says so (skip).
WAIVED_CHECKS = {"test_teardown_min[protected]": FINDING_REFERENCE,
                 "test_teardown[protected]": "qemu-virt.yaml: expect.known_findings.teardown/protected"}


def reproduced(suite, element):
    """[(case, result element, its reference)] of the waived checks the boot reproduced (skip if none)."""
    found = [(case, result, WAIVED_CHECKS[case.name]) for case in suite if case.name in WAIVED_CHECKS
             for result in case.result if isinstance(result, element)]
    if not found:
        pytest.skip("QEMU 7.2 leaked at neither teardown check on this boot: no finding to show")
    return found


def test_a_known_finding_is_visibly_a_finding_and_does_not_fail(runs):
    path, proc = junit(runs, "finding")
    assert proc.returncode == 0, said(proc)
    (suite,) = JUnitXml.fromfile(str(path))
    found = reproduced(suite, Skipped)
    from pkvmlab.report.junit import XFAILED, load_suites
    (loaded,) = load_suites(path)
    for case, result, reference in found:
        assert result._elem.get("type") == "pkvmlab.finding"
        assert result.message.startswith(f"FINDING (waived): known finding on qemu-virt: {FINDING_REASON} "
                                         f"({reference}); measured: ")
        assert "survived teardown" in result.message
        out = case.system_out
        assert "known finding: waived, not failing" in out and f"reference = {reference}" in out
        assert "evidence = " in out and "guest_pattern" in out and "[[ATTACHMENT|console.log]]" in out
        # History and the HTML table count it as a finding (xfail, kind waived), not as a skip.
        loaded_case = next(c for c in loaded.cases if c.name == case.name)
        assert (loaded_case.outcome, loaded_case.kind) == (XFAILED, "waived")
    assert (path.parent / "console.log").is_file()


def test_strict_mode_fails_a_waived_finding_as_the_boards(runs):
    path, proc = junit(runs, "strict")
    (suite,) = JUnitXml.fromfile(str(path))
    assert props(suite)["pkvmlab.strict_findings"] == "yes"
    found = reproduced(suite, Failure)    # first: a boot that leaked at neither check has no finding to fail
    assert proc.returncode == 1, said(proc)
    from pkvmlab.report.junit import load_suites
    (loaded,) = load_suites(path)
    for case, result, reference in found:
        assert result._elem.get("type") == "pkvmlab.finding.waived"
        assert result.message == f"waived finding: known finding on qemu-virt: {FINDING_REASON} ({reference})"
        assert "known finding: fails (strict mode)" in case.system_out
        assert "[[ATTACHMENT|console.log]]" in case.system_out
        loaded_case = next(c for c in loaded.cases if c.name == case.name)
        assert (loaded_case.failure_class, loaded_case.kind) == ("board", "finding")


def test_a_matrix_keeps_the_single_runs_keys_and_tells_emulators_apart(runs):
    single, _ = junit(runs, "single")
    path, proc = junit(runs, "matrix")
    assert proc.returncode == 0, said(proc)
    suites = list(JUnitXml.fromfile(str(path)))
    by_identity = {props(s)["pkvmlab.identity"]: s for s in suites}
    assert set(by_identity) == {"qemu-virt.protected.max", "qemu-virt.protected.max.qemu-host"}
    # The board's own emulator: the cell is the single run's combination, case for case.
    assert [(c.classname, c.name) for c in by_identity["qemu-virt.protected.max"]] == keys(single)
    host = by_identity["qemu-virt.protected.max.qemu-host"]
    assert {c.classname.rsplit(".suites.", 1)[0] for c in host} == {"qemu-virt.protected.max.qemu-host"}
    assert len(keys(path)) == len(set(keys(path)))      # GitLab counts a (classname, name) once
    # What the cell measured is beside each case in the merged file too.
    p = props(host)
    for case in host:
        for name, value in p.items():
            if name.startswith(f"{case.name}.") and not name.endswith(".console_log"):
                assert f"{name[len(case.name) + 1:]} = {' '.join(value.split())}" in case.system_out


def test_a_matrix_artifact_reads_as_a_finding_in_junit_markdown_and_html(runs):
    path, _ = junit(runs, "matrix")
    host = next(s for s in JUnitXml.fromfile(str(path)) if props(s)["pkvmlab.identity"].endswith(".qemu-host"))
    artifacts = [(case, r) for case in host for r in case.result if isinstance(r, Skipped)
                 and r._elem.get("type") == "pkvmlab.finding.artifact"]
    if not artifacts:     # see WAIVED_CHECKS: 1 boot in 10 reproduces neither
        pytest.skip("QEMU 7.2 leaked at neither teardown check in the matrix's cell: no artifact to show")
    table = (path.parent / "matrix.md").read_text()
    page = (path.parent / "report.html").read_text()
    for case, result in artifacts:
        assert result.message.startswith("EMULATOR ARTIFACT (waived): emulator artifact, not the board's")
        assert "emulator artifact: waived, not failing" in case.system_out
        assert f"[[ATTACHMENT|{props(host)['pkvmlab.console_log']}]]" in case.system_out
        # The table and the page compare the two emulators from the model, not from this message.
        assert re.search(rf"emulator artifact: {re.escape(case.name)}: pass on qemu-1\d[.\d]+, "
                         r"artifact on qemu-7[.\d]+", table), table
        assert f'data-finding="artifact" data-suite="{host.name}" data-check="{case.name}"' in page
    assert len(re.findall(r'<th scope="col"[^>]* data-column=', page)) == 2      # one column per combination
