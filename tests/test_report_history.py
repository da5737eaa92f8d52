"""The SQLite history: trends per board, and tests whose verdict flips between runs."""

import argparse
import sqlite3
from pathlib import Path

import pytest

from pkvmlab.report import cli
from pkvmlab.report.history import board_trend, flaky_tests, record_run
from pkvmlab.report.junit import JUnitReadError
from pkvmlab.report.merge import merge_junit

FIXTURES = Path(__file__).parent / "fixtures" / "junit"
DAY1 = FIXTURES / "20261120-080000-qemu-virt-trixie-backports-protected" / "junit.xml"
DAY2 = FIXTURES / "20261121-080000-qemu-virt-trixie-backports-protected" / "junit.xml"
DAY3 = FIXTURES / "20261122-080000-qemu-virt-trixie-backports-protected" / "junit.xml"
NVHE = FIXTURES / "20261120-080200-qemu-virt-trixie-backports-nvhe" / "junit.xml"
EL1 = FIXTURES / "20261120-080600-qemu-virt-el1" / "junit.xml"
SUITE = "qemu-virt/7.3.4+deb13-arm64/protected"


def test_one_run_is_not_flaky(tmp_path):
    db = tmp_path / "history.sqlite"
    record_run(db, DAY1)
    assert flaky_tests(db) == []


def test_a_test_that_flips_between_two_runs_is_flaky(tmp_path):
    db = tmp_path / "history.sqlite"
    record_run(db, DAY1)
    record_run(db, DAY2)
    flaky = {f.test: f for f in flaky_tests(db)}
    assert set(flaky) == {"suites.boot.test_boot::test_no_kernel_problems",
                          "suites.pvm.test_pvm::test_guest_current_el"}    # failed, and errored, on day 2
    item = flaky["suites.boot.test_boot::test_no_kernel_problems"]
    assert item.suite == SUITE and item.flips == 1
    assert [o for _, _, o in item.history] == ["passed", "failed"]
    record_run(db, DAY3)
    assert {f.test: f.flips for f in flaky_tests(db)}["suites.boot.test_boot::test_no_kernel_problems"] == 2


def test_skips_and_other_modes_are_not_flips(tmp_path):
    """nvhe skips the pVM checks protected runs pass: a different suite, and a skip is no verdict."""
    db = tmp_path / "history.sqlite"
    for path in (DAY1, NVHE, EL1, DAY3):
        record_run(db, path)
    assert flaky_tests(db) == []


def test_trend_per_board_in_time_order(tmp_path):
    db = tmp_path / "history.sqlite"
    for path in (DAY3, EL1, DAY1, DAY2):     # recorded out of order
        record_run(db, path)
    points = board_trend(db, board="qemu-virt")
    assert [p.started for p in points] == ["2026-11-20T08:00:00Z", "2026-11-21T08:00:00Z", "2026-11-22T08:00:00Z"]
    assert [p.boot_seconds for p in points] == [2.412, 2.954, 2.377]
    assert [round(p.pass_rate, 3) for p in points] == [1.0, round(7 / 9, 3), 1.0]
    (el1,) = board_trend(db, board="qemu-virt-el1")
    assert (el1.passed, el1.skipped) == (5, 5)


def test_recording_again_replaces_and_merged_files_line_up(tmp_path):
    db = tmp_path / "history.sqlite"
    record_run(db, DAY1)
    record_run(db, DAY1)
    merged = tmp_path / "lab.xml"
    merge_junit([DAY1, DAY2], merged)
    record_run(db, merged)        # the same two runs again, through a merged file
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
        assert conn.execute("SELECT COUNT(DISTINCT test) FROM results").fetchone()[0] == 10
    assert len(flaky_tests(db)) == 2


def test_unreadable_junit_records_nothing(tmp_path):
    db = tmp_path / "history.sqlite"
    record_run(db, DAY1)
    with pytest.raises(JUnitReadError):
        record_run(db, FIXTURES / "broken-truncated" / "junit.xml")
    assert len(board_trend(db)) == 1


def test_cli_record_and_show(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="pkvmlab")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    db = tmp_path / "h.sqlite"

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.func(args)
    assert run("report", "history", "record", "--db", str(db), str(DAY1), str(DAY2)) == 0
    assert run("report", "history", "show", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert "flaky tests: 2" in out and "test_no_kernel_problems: 1 flips  (passed failed)" in out
    assert run("report", "history", "record", "--db", str(db), str(FIXTURES / "broken-truncated/junit.xml")) == 2
    assert run("report", "history", "show", "--db", str(tmp_path / "none.sqlite")) == 2


def _run_with(tmp_path, run_id, started, outcome_xml):
    path = tmp_path / run_id / "junit.xml"
    path.parent.mkdir()
    props = "".join(f'<property name="pkvmlab.{k}" value="{v}" />' for k, v in (
        ("board", "qemu-virt"), ("kernel_release", "7.3.4+deb13-arm64"), ("kvm_arm_mode", "protected"),
        ("run_id", run_id), ("started", started), ("boot_seconds", "4.0")))
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="x" tests="1" errors="0" '
                    f'failures="0" skipped="0"><properties>{props}</properties><testcase classname="suites.pvm.t" '
                    f'name="test_teardown[protected]" time="0.0">{outcome_xml}</testcase></testsuite></testsuites>')
    return path


def test_a_known_finding_that_comes_and_goes_is_flaky_and_not_a_skip(tmp_path):
    db = tmp_path / "history.sqlite"
    known = '<skipped type="pytest.xfail" message="known finding on qemu-virt" />'
    for run_id, started, outcome in (("r1", "2026-11-20T08:00:00Z", known), ("r2", "2026-11-21T08:00:00Z", ""),
                                     ("r3", "2026-11-22T08:00:00Z", '<skipped message="no /dev/kvm" />')):
        record_run(db, _run_with(tmp_path, run_id, started, outcome))
    points = board_trend(db)
    assert [(p.run_id, p.passed, p.xfailed, p.skipped) for p in points] == [
        ("r1", 0, 1, 0), ("r2", 1, 0, 0), ("r3", 0, 0, 1)]
    assert points[0].pass_rate is None and points[1].pass_rate == 1.0
    (flaky,) = flaky_tests(db)
    assert flaky.flips == 1 and [o for _, _, o in flaky.history] == ["xfailed", "passed", "skipped"]


def test_a_version_1_history_gains_the_xfailed_column(tmp_path):
    db = tmp_path / "history.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("""CREATE TABLE runs (run_id TEXT NOT NULL, suite TEXT NOT NULL, board TEXT NOT NULL,
        kernel_release TEXT, kvm_arm_mode TEXT, kvm_mode TEXT, boot_el TEXT, boot_seconds REAL, started TEXT NOT NULL,
        source TEXT, passed INTEGER NOT NULL, failed INTEGER NOT NULL, errors INTEGER NOT NULL,
        skipped INTEGER NOT NULL, PRIMARY KEY (run_id, suite));
        INSERT INTO runs VALUES ('old', 'qemu-virt/k/protected', 'qemu-virt', 'k', 'protected', 'protected-hvhe',
        'EL2', 4.5, '2026-11-01T00:00:00Z', 'x', 10, 0, 0, 1); PRAGMA user_version = 1;""")
    conn.close()
    record_run(db, _run_with(tmp_path, "new", "2026-11-20T08:00:00Z", ""))
    assert [(p.run_id, p.xfailed) for p in board_trend(db)] == [("old", 0), ("new", 0)]
