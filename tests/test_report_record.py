"""The run-record contract (``pkvmlab.report.record``): identity, outcome kinds, property names.

The rules are unit-tested here; that the plugin keeps to them is checked on the stored real runs
(``tests/fixtures/runs``, written by ``pkvmlab run`` of the real suites).
"""

import os
from pathlib import Path

import pytest

from pkvmlab.report import record
from pkvmlab.report.cases import Finding, portable_path
from pkvmlab.report.identity import case_key, identity_prefix, plain_classname, qualified_classname
from pkvmlab.report.junit import load_suites

RUNS = sorted((Path(__file__).parent / "fixtures" / "runs").glob("*/junit.xml"))


@pytest.mark.parametrize(("args", "kwargs", "prefix"), [
    (("qemu-virt", "protected"), {}, "qemu-virt.protected"),
    (("qemu-virt", "protected"), {"cpu": "max,pauth-impdef=on"}, "qemu-virt.protected.max"),   # model only
    (("qemu-virt", "nvhe"), {"cpu": "cortex-a72", "kernel_suite": "sid"}, "qemu-virt.nvhe.cortex-a72.kernel-sid"),
    (("qemu-virt", "protected"), {"cpu": "max", "qemu": "host"}, "qemu-virt.protected.max.qemu-host"),
    (("qemu-virt", "protected"), {"qemu": "/opt/qemu 9/bin/qemu-system-aarch64"},
     "qemu-virt.protected.qemu-opt_qemu_9_bin_qemu-system-aarch64"),   # a path: no dots, no slashes
    (("pixel-8", "protected"), {"kernel_suite": "trixie-backports"}, "pixel-8.protected.kernel-trixie-backports"),
    (("my.board", "pro/tected"), {}, "my_board.pro_tected"),      # dots would split the classname's levels
    (("", "protected"), {}, "_.protected"),
])
def test_identity_prefix(args, kwargs, prefix):
    assert identity_prefix(*args, **kwargs) == prefix


def test_identity_has_no_version_in_it():
    """A kernel or QEMU upgrade is the same check measured again: only the channel names it."""
    assert identity_prefix("qemu-virt", "protected", cpu="max") == identity_prefix("qemu-virt", "protected",
                                                                                    cpu="max,pauth-impdef=on")
    assert "7.3" not in identity_prefix("qemu-virt", "protected", kernel_suite="trixie-backports")


def test_qualified_and_plain_classnames_round_trip():
    prefix = "qemu-virt.protected.max"
    module = "suites.pvm.test_isolation"
    qualified = qualified_classname(prefix, module)
    assert qualified == "qemu-virt.protected.max.suites.pvm.test_isolation"
    assert qualified_classname(prefix, qualified) == qualified        # idempotent: a merge of a merge
    assert plain_classname(prefix, qualified) == module
    assert plain_classname(prefix, "other.suites.pvm.test_isolation") is None
    assert plain_classname("qemu-virt.protected", "qemu-virt.protected.max.x") == "max.x"   # by prefix only
    assert qualified_classname("", module) == module and plain_classname("", module) is None
    assert case_key(prefix, module, "test_boot_el") == (qualified, "test_boot_el")


@pytest.mark.parametrize(("value", "expected"), [
    ("/runs/r1/console.log", "console.log"),
    ("/runs/r1", "."),
    ("/cache/pkvmlab/sets/qemu-arm64-1/kernel", "$PKVMLAB_CACHE/sets/qemu-arm64-1/kernel"),
    ("/src/pkvmlab/envs/qemu-virt.yaml", "$PKVMLAB_ROOT/envs/qemu-virt.yaml"),
    ("/elsewhere/secret/file.bin", "file.bin"),            # no host path leaks: the name only
    ("relative/path.txt", "relative/path.txt"),
    ("max,pauth-impdef=on", "max,pauth-impdef=on"),
    (None, None),
])
def test_portable_path(value, expected):
    roots = (("PKVMLAB_CACHE", Path("/cache/pkvmlab")), ("PKVMLAB_ROOT", Path("/src/pkvmlab")))
    assert portable_path(value, Path("/runs/r1"), roots) == expected


def test_portable_path_prefers_the_run_directory_over_a_root_that_holds_it():
    roots = (("PKVMLAB_ROOT", Path("/src/pkvmlab")),)
    assert portable_path("/src/pkvmlab/reports/r1/x.log", Path("/src/pkvmlab/reports/r1"), roots) == "x.log"


@pytest.mark.parametrize(("tag", "junit_type", "kind", "status"), [
    (None, "", record.PASS, record.PASSED),
    ("failure", "pkvmlab.board", record.FAIL, record.FAILED),
    ("failure", "AssertionError", record.FAIL, record.FAILED),
    ("failure", record.STRICT_FINDING_TYPE, record.FINDING, record.FAILED),
    ("error", "pkvmlab.infrastructure", record.ERROR_KIND, record.ERROR),
    ("error", record.INTERRUPTED_TYPE, record.INTERRUPTED, record.ERROR),
    ("skipped", record.FINDING_TYPE, record.WAIVED, record.XFAILED),
    ("skipped", record.ARTIFACT_TYPE, record.ARTIFACT, record.XFAILED),
    ("skipped", "pytest.xfail", record.WAIVED, record.XFAILED),     # files written before pkvmlab typed them
    ("skipped", "pytest.skip", record.SKIP, record.SKIPPED),
    ("skipped", None, record.SKIP, record.SKIPPED),
])
def test_a_kind_comes_from_the_element_and_its_type(tag, junit_type, kind, status):
    assert record.kind_of(tag, junit_type) == kind
    assert record.status_of(kind) == status


def test_the_message_never_decides_the_kind():
    """A skip whose reason happens to start like a finding is still a skip."""
    assert record.kind_of("skipped", "pytest.skip") == record.SKIP
    with pytest.raises(ValueError, match="not a JUnit result element"):
        record.kind_of("system-out")


def test_findings_are_findings_whatever_their_status():
    assert {k for k, info in record.KINDS.items() if info.finding} == {record.FINDING, record.WAIVED, record.ARTIFACT}
    assert record.failure_class(record.FINDING, record.STRICT_FINDING_TYPE) == "board"
    assert record.failure_class(record.ERROR_KIND, "pkvmlab.infrastructure") == "infrastructure"
    assert record.failure_class(record.FAIL, "AssertionError") is None
    assert record.failure_class(record.WAIVED, record.FINDING_TYPE) is None


def test_a_findings_junit_type_is_the_contracts():
    artifact = Finding("artifact", "emulator artifact, not the board's", "README.md", "guest_pattern")
    finding = Finding("finding", "known", "https://example.invalid/42", "guest_pattern")
    assert artifact.junit_type == record.ARTIFACT_TYPE and finding.junit_type == record.FINDING_TYPE


def test_real_runs_write_only_contract_properties_and_kinds():
    assert len(RUNS) == 8
    seen = set()
    for path in RUNS:
        (suite,) = load_suites(path)
        names = {name for name, _ in suite.property_list if name.startswith(record.TYPE_PREFIX)}
        unknown = {name for name in names if not record.known_property(name)}
        assert not unknown, f"{path.parent.name}: properties not in pkvmlab.report.record.PROPERTIES: {unknown}"
        assert suite.properties[record.IDENTITY] == identity_prefix(
            suite.prop("board"), suite.prop("kvm_arm_mode"), cpu=suite.prop("cpu"),
            qemu="host" if suite.prop("emulator_source") == "host" else None)
        assert all(c.classname.startswith(suite.identity + ".") for c in suite.cases)
        seen |= {c.kind for c in suite.cases}
        assert not any(os.path.isabs(value or "") for _, value in suite.property_list)
    assert seen == {record.PASS, record.FAIL, record.FINDING, record.WAIVED, record.ARTIFACT, record.SKIP}
