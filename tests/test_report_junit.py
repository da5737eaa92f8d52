"""validate_junit / load_suites / write_junit against real pytest output and the libraries' measured breakages."""

from pathlib import Path

import pytest
from junit_xml import TestCase as JxCase
from junit_xml import TestSuite as JxSuite
from junit_xml import to_xml_report_string
from junitparser import JUnitXml

from pkvmlab.report.junit import (
    ERROR,
    FAILED,
    PASSED,
    SKIPPED,
    XFAILED,
    InvalidJUnitError,
    JUnitReadError,
    load_suites,
    validate_junit,
    write_junit,
)

FIXTURES = Path(__file__).parent / "fixtures" / "junit"
RUNS = sorted(p for p in FIXTURES.glob("2*/junit.xml"))
BOOKWORM = FIXTURES / "20261120-080400-qemu-virt-bookworm-protected" / "junit.xml"
FLAKY_RUN = FIXTURES / "20261121-080000-qemu-virt-trixie-backports-protected" / "junit.xml"


def test_fixtures_are_there():
    assert len(RUNS) == 6


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.parent.name)
def test_pytest_xunit2_output_validates(path):
    assert validate_junit(path) == []
    assert validate_junit(path.read_bytes()) == []


def test_truncated_file_is_reported_with_path_and_position():
    path = FIXTURES / "broken-truncated" / "junit.xml"
    (problem,) = validate_junit(path)
    assert problem.startswith(f"{path}: not readable as XML")
    assert "line 1, column" in problem


def test_xunit1_is_rejected_for_its_file_and_line_attributes():
    problems = validate_junit(FIXTURES / "legacy-xunit1" / "junit.xml")
    assert any("'file' attribute not allowed" in p for p in problems)
    assert any("'line' attribute not allowed" in p for p in problems)


def test_a_valid_xml_that_is_not_junit_is_refused():
    assert "root element is <property>" in validate_junit(b'<property name="a" value="b"/>')[0]


def test_junitparser_merge_output_is_caught(tmp_path):
    """Measured: junitparser's own merge puts skipped= on <testsuites>; our check must see it."""
    merged = JUnitXml.fromfile(str(RUNS[0])) + JUnitXml.fromfile(str(RUNS[1]))
    data = merged.tostring()
    assert any("'skipped' attribute not allowed" in p for p in validate_junit(data))
    target = tmp_path / "junit.xml"
    target.write_text("previous")
    with pytest.raises(InvalidJUnitError, match="not written"):
        write_junit(target, data)
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]


def test_junit_xml_disabled_attribute_is_caught():
    """Measured: junit-xml 1.9 writes disabled= (rejected by junit-10.xsd)."""
    data = to_xml_report_string([JxSuite("s", [JxCase("t", classname="c", elapsed_sec=0.5)])]).encode()
    assert any("'disabled' attribute not allowed" in p for p in validate_junit(data))


def test_write_junit_writes_valid_data(tmp_path):
    target = write_junit(tmp_path / "out" / "junit.xml", RUNS[0].read_bytes())
    assert target.read_bytes() == RUNS[0].read_bytes()


def test_load_suites_reads_properties_outcomes_and_measured_values():
    (suite,) = load_suites(BOOKWORM)
    assert suite.name == "qemu-virt/6.1.0-41-arm64/protected" == suite.combination
    assert suite.prop("kernel_package") == "linux-image-6.1.0-41-arm64 6.1.170-1"
    assert suite.prop("kvm_mode") == "protected-nvhe"
    assert suite.counts() == {PASSED: 6, FAILED: 1, ERROR: 0, XFAILED: 0, SKIPPED: 3}
    create = next(c for c in suite.cases if c.name == "test_pvm_create")
    assert create.outcome == FAILED and "EINVAL" in create.message
    assert "KVM_CREATE_VM(type=0x80000000): Invalid argument" in create.system_out
    assert suite.measured("test_pvm_create") == {"result": "EINVAL"}
    skipped = next(c for c in suite.cases if c.name == "test_microdroid_boot")
    assert skipped.outcome == SKIPPED and skipped.message.startswith("not applicable on qemu-virt")


def test_load_suites_sees_setup_errors():
    (suite,) = load_suites(FLAKY_RUN)
    probe = next(c for c in suite.cases if c.name == "test_guest_current_el")
    assert probe.outcome == ERROR and "probe did not answer" in probe.message


def test_load_suites_names_the_file_and_parse_error():
    path = FIXTURES / "broken-truncated" / "junit.xml"
    with pytest.raises(JUnitReadError) as caught:
        load_suites(path)
    assert caught.value.path == str(path)
    assert "not well-formed XML" in caught.value.reason and "line 1, column" in caught.value.reason


def test_an_xfail_is_a_known_finding_not_a_skip(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="s" tests="2" errors="0" failures="0" '
        'skipped="2"><testcase classname="suites.pvm.test_isolation" name="test_teardown[protected]" time="0.0">'
        '<skipped type="pytest.xfail" message="known finding on qemu-virt (page not wiped)" /></testcase>'
        '<testcase classname="suites.pvm.test_isolation" name="test_create[protected]" time="0.0">'
        '<skipped type="pytest.skip" message="no /dev/kvm">where</skipped></testcase></testsuite></testsuites>')
    assert validate_junit(path) == []
    (suite,) = load_suites(path)
    known, skip = suite.cases
    assert (known.outcome, known.message) == (XFAILED, "known finding on qemu-virt (page not wiped)")
    assert (skip.outcome, skip.message) == (SKIPPED, "no /dev/kvm")
    assert suite.counts() == {PASSED: 0, FAILED: 0, ERROR: 0, XFAILED: 1, SKIPPED: 1}
