"""The pvm suite and the matrix on the real QEMU board (real kernels, real EL probe).

Each run boots once (about 5-8 s under TCG); JUnit files are parsed back and
validated against Jenkins' junit-10.xsd.
"""

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))
pytestmark = pytest.mark.qemu


def pkvmlab(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def run_pvm(tmp_path, *extra):
    proc = pkvmlab("run", "--board", "qemu-virt", "--reports", str(tmp_path), "--run-id", "run", *extra,
                   str(ROOT / "suites" / "pvm"))
    path = tmp_path / "run" / "junit.xml"
    assert path.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    SCHEMA.validate(str(path))
    suite = ET.parse(path).getroot().find("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    outcomes = {}
    for case in suite.iter("testcase"):
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        detail = case.find(kind)
        outcomes[case.get("name")] = (kind, detail.get("message", "") if detail is not None else "")
    return proc, props, outcomes


def test_pkvm_isolates_a_protected_vm(tmp_path):
    proc, props, outcomes = run_pvm(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in ("test_probe_completed", "test_create[protected]", "test_guest_el[protected]",
                 "test_host_read[protected]", "test_host_read[normal]", "test_hypercalls[protected]"):
        assert outcomes[name][0] == "passed", (name, outcomes[name])
    assert props["pkvmlab.pvm.create"] == "ok"
    assert props["test_guest_el[protected].current_el"] == "EL1"
    assert props["test_host_read[protected].signal"] == "SIGSEGV SEGV_ACCERR"
    assert props["test_host_read[normal].first_qword"] == "0x706b766d454c5052"
    assert (tmp_path / "run" / "elprobe.jsonl").read_text().count('"record":"result"') == 12   # 6 probes x 2 VMs


def test_kernel_without_pvms_skips_isolation_with_the_measured_reason(tmp_path):
    proc, props, outcomes = run_pvm(tmp_path, "--kernel-suite", "trixie")     # Debian 6.12
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert props["pkvmlab.kernel_release"].startswith("6.12.")
    assert props["pkvmlab.pvm.create"].startswith("refused: EINVAL")
    kind, message = outcomes["test_host_read[protected]"]
    assert kind == "skipped" and "protected type refused: EINVAL" in message
    assert outcomes["test_host_read[normal]"][0] == "passed"


def test_nvhe_mode_claims_no_isolation_and_the_control_read_succeeds(tmp_path):
    proc, props, outcomes = run_pvm(tmp_path, "--kvm-mode", "nvhe")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert props["pkvmlab.kvm_mode"] == "nvhe"
    assert outcomes["test_create[protected]"][0] == "passed"          # the kernel refuses the protected type
    assert outcomes["test_host_read[normal]"][0] == "passed"
    assert outcomes["test_host_read[protected]"][0] == "skipped"


def test_matrix_writes_one_junit_and_a_table(tmp_path):
    proc = pkvmlab("matrix", "--kernels", "trixie-backports", "--modes", "protected,default", "--reports",
                   str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (matrix_dir,) = [d for d in tmp_path.iterdir() if d.name.startswith("matrix-")]
    junit = matrix_dir / "junit.xml"
    SCHEMA.validate(str(junit))
    names = [s.get("name") for s in ET.parse(junit).getroot().iter("testsuite")]
    assert len(names) == 2
    assert {name.split("/")[2] for name in names} == {"protected", "default"}
    assert all(re.fullmatch(r"qemu-virt/[^/]+/[a-z]+/qemu-\d+\.\d+\.\d+/max", name) for name in names), names
    table = (matrix_dir / "matrix.md").read_text()
    assert "pVM create: ok; host read of pVM page: fault: SIGSEGV SEGV_ACCERR" in table
    assert "EL2, VHE; pVM create: refused: EINVAL" in table
    # On the board's faithful emulator (QEMU >= 10) the protected guest's page is wiped: nothing is waived.
    protected = next(cell for cell in table.split(" | ") if "pVM create: ok" in cell)
    assert "after teardown: zeroed" in protected and " known" not in protected and ", 0 fail)" in protected, protected
    assert "| kernel | QEMU | -cpu |" in table
    assert '<table class="matrix"' in (matrix_dir / "matrix.html").read_text()   # the report page (report.html)
