"""merge_junit and `report merge`: one schema-valid file from many runs, bad inputs rejected by name."""

import argparse
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import xmlschema

from pkvmlab.report import cli
from pkvmlab.report.junit import load_suites
from pkvmlab.report.merge import merge_junit

FIXTURES = Path(__file__).parent / "fixtures" / "junit"
RUNS = sorted(FIXTURES.glob("2*/junit.xml"))
FIRST_DAY = [p for p in RUNS if p.parent.name.startswith("20261120")]
TRUNCATED = FIXTURES / "broken-truncated" / "junit.xml"
XUNIT1 = FIXTURES / "legacy-xunit1" / "junit.xml"
JENKINS_XSD = Path(__file__).parent / "schemas" / "junit-10.xsd"


@pytest.fixture(scope="module")
def jenkins_schema():
    """The tests' own copy of Jenkins' schema: the check does not go through the code under test."""
    return xmlschema.XMLSchema10(str(JENKINS_XSD))


@pytest.fixture
def merged(tmp_path):
    output = tmp_path / "lab" / "junit.xml"
    result = merge_junit([RUNS[0], TRUNCATED, *RUNS[1:], XUNIT1], output)
    return result, output


def test_output_validates_against_jenkins_schema(merged, jenkins_schema):
    result, output = merged
    assert result.written
    jenkins_schema.validate(str(output))
    root = ET.parse(output).getroot()
    assert root.tag == "testsuites" and "skipped" not in root.attrib
    assert root.get("tests") == str(sum(len(s.cases) for s in load_suites(output)))


def test_suites_are_named_board_kernel_mode(merged):
    result, output = merged
    names = [s.name for s in load_suites(output)]
    assert names[:4] == ["qemu-virt/7.3.4+deb13-arm64/protected", "qemu-virt/7.3.4+deb13-arm64/nvhe",
                         "qemu-virt/6.1.0-41-arm64/protected", "qemu-virt-el1/7.3.4+deb13-arm64/protected"]
    # the same combination from later runs stays apart, tagged with its run id
    assert names[4] == "qemu-virt/7.3.4+deb13-arm64/protected@20261121-080000-qemu-virt-trixie-backports-protected"
    assert result.suites == names
    assert any("a second 'qemu-virt/7.3.4+deb13-arm64/protected'" in n for n in result.notes)


def test_properties_times_and_cases_are_kept(merged):
    _, output = merged
    for source, suite in zip(RUNS, load_suites(output), strict=True):
        (original,) = load_suites(source)
        assert [p for p in suite.property_list if p[0] != "pkvmlab.console_log"] == \
               [p for p in original.property_list if p[0] != "pkvmlab.console_log"]
        # the suite's own time, not junitparser's sum of its cases
        assert suite.time == original.time
        assert [(c.name, c.outcome, c.message) for c in suite.cases] == \
               [(c.name, c.outcome, c.message) for c in original.cases]


def test_console_log_paths_still_point_at_the_logs(merged):
    _, output = merged
    for suite in load_suites(output):
        log = output.parent / suite.prop("console_log")
        assert log.is_file(), log
        assert log.resolve().parent.name == suite.prop("run_id")


def test_classnames_are_unique_across_boards(merged):
    """GitLab counts only the first of two tests with the same classname+name."""
    _, output = merged
    ids = [(c.classname, c.name) for s in load_suites(output) for c in s.cases]
    assert len(ids) == len(set(ids))
    assert ("qemu-virt-el1/7.3.4+deb13-arm64/protected.suites.boot.test_boot", "test_boot_el") in ids


def test_malformed_inputs_are_rejected_with_path_and_reason(merged):
    result, _ = merged
    assert [r.path for r in result.rejected] == [TRUNCATED, XUNIT1]
    assert "not well-formed XML" in result.rejected[0].reason and "line 1, column" in result.rejected[0].reason
    assert "'file' attribute not allowed" in result.rejected[1].reason
    assert len(result.suites) == len(RUNS)
    assert result.exit_code == 1


def test_merging_a_merged_file_again_is_stable(merged, tmp_path, jenkins_schema):
    _, first = merged
    again = tmp_path / "again.xml"
    result = merge_junit([first], again)
    assert result.exit_code == 0
    jenkins_schema.validate(str(again))
    a, b = load_suites(first), load_suites(again)
    assert [s.name for s in a] == [s.name for s in b]
    assert [c.classname for s in a for c in s.cases] == [c.classname for s in b for c in s.cases]
    assert all((again.parent / s.prop("console_log")).is_file() for s in b)


def test_nothing_mergeable_leaves_the_previous_output(tmp_path):
    output = tmp_path / "junit.xml"
    shutil.copy(RUNS[0], output)
    before = output.read_bytes()
    result = merge_junit([TRUNCATED, XUNIT1], output)
    assert not result.written and result.exit_code == 1
    assert output.read_bytes() == before


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="pkvmlab")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_merge_exit_codes(tmp_path, capsys, jenkins_schema):
    out = tmp_path / "lab.xml"
    assert _run_cli(["report", "merge", "-o", str(out), *map(str, FIRST_DAY)]) == 0
    jenkins_schema.validate(str(out))
    assert _run_cli(["report", "merge", "-o", str(out), str(TRUNCATED), *map(str, FIRST_DAY)]) == 1
    err = capsys.readouterr().err
    assert f"rejected {TRUNCATED}: not well-formed XML" in err
    assert _run_cli(["report", "merge", "-o", str(out), str(tmp_path / "nope.xml")]) == 2
    with pytest.raises(SystemExit) as usage:
        _run_cli(["report", "merge", str(RUNS[0])])     # -o missing
    assert usage.value.code == 2


def test_relative_inputs_and_output_in_another_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(FIXTURES / RUNS[0].parent.name, work / "reports" / "r1")
    monkeypatch.chdir(work)
    result = merge_junit([Path("reports/r1/junit.xml")], Path("lab/merged.xml"))
    assert result.exit_code == 0
    (suite,) = load_suites(work / "lab" / "merged.xml")
    assert suite.prop("console_log") == os.path.join("..", "reports", "r1", "console.log")


def test_merging_a_merged_file_again_keeps_classnames_plain_after_a_rename(tmp_path, jenkins_schema):
    """A matrix run's junit.xml is itself a merge; merged with a run of the same combination it is renamed."""
    first = tmp_path / "matrix" / "junit.xml"
    assert merge_junit([RUNS[0]], first).written
    lab = tmp_path / "lab" / "junit.xml"
    result = merge_junit([RUNS[0], first], lab)
    jenkins_schema.validate(str(lab))
    plain, renamed = load_suites(lab)
    assert renamed.name.startswith(f"{plain.name}@")
    assert [c.classname.removeprefix(f"{renamed.name}.") for c in renamed.cases] == [
        c.classname.removeprefix(f"{plain.name}.") for c in plain.cases]
    assert all(not c.classname.removeprefix(f"{renamed.name}.").startswith("qemu-virt") for c in renamed.cases)
    assert result.exit_code == 0


def test_a_failing_tests_console_log_property_follows_the_merge(tmp_path):
    run = tmp_path / "runs" / "one"
    shutil.copytree(RUNS[0].parent, run)
    text = (run / "junit.xml").read_text()
    text = text.replace("<properties>", '<properties><property name="test_x.console_log" value="console.log" />', 1)
    (run / "junit.xml").write_text(text)
    lab = tmp_path / "lab" / "deep" / "junit.xml"
    assert merge_junit([run / "junit.xml"], lab).written
    (suite,) = load_suites(lab)
    for name in ("pkvmlab.console_log", "test_x.console_log"):
        assert (lab.parent / suite.properties[name]).resolve() == (run / "console.log").resolve(), name


def test_the_merged_time_is_the_wall_time_the_runs_span(tmp_path):
    """Two real runs that overlapped (started together, as matrix cells do) and one after them: the
    <testsuites> time runs from the first start to the last end, not the sum of the suites' times."""
    import datetime
    import xml.etree.ElementTree as ET
    runs = Path(__file__).parent / "fixtures" / "runs"
    inputs = [runs / name / "junit.xml" for name in ("virt-1", "finding", "virt-2")]
    out = tmp_path / "lab.xml"
    assert merge_junit(inputs, out).exit_code == 0
    suites = ET.parse(out).getroot()
    spans = [(datetime.datetime.fromisoformat(s.get("timestamp")), float(s.get("time")))
             for s in suites.findall("testsuite")]
    first = min(start for start, _ in spans)
    wall = max((start - first).total_seconds() + seconds for start, seconds in spans)
    assert float(suites.get("time")) == pytest.approx(wall, abs=0.002)
    assert float(suites.get("time")) < sum(seconds for _, seconds in spans)    # virt-1 and finding overlapped
