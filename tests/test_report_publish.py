"""publish_run: what the harness calls after a run (history row + report.html), never failing the run."""

import shutil
from pathlib import Path

from pkvmlab.report.history import board_trend
from pkvmlab.report.publish import publish_run

FIXTURES = Path(__file__).parent / "fixtures" / "junit"
DAY1 = FIXTURES / "20261120-080000-qemu-virt-trixie-backports-protected"
DAY2 = FIXTURES / "20261121-080000-qemu-virt-trixie-backports-protected"


def test_two_runs_published_into_one_reports_dir_share_a_trend(tmp_path):
    db = tmp_path / "history.sqlite"
    for run in (DAY1, DAY2):
        shutil.copytree(run, tmp_path / run.name)
        lines = publish_run(tmp_path / run.name / "junit.xml", db)
        assert lines == [f"pkvmlab: history {db}: recorded 1 suite of {tmp_path / run.name / 'junit.xml'}",
                         f"pkvmlab: HTML report {tmp_path / run.name / 'report.html'}"]
    assert [p.run_id for p in board_trend(db)] == [DAY1.name, DAY2.name]
    page = (tmp_path / DAY2.name / "report.html").read_text()
    assert 'data-board="qemu-virt"' in page and "2 runs" in page


def test_a_bad_history_is_a_line_of_text_not_an_exception(tmp_path):
    shutil.copytree(DAY1, tmp_path / "run")
    db = tmp_path / "history.sqlite"
    db.write_text("not a database")
    lines = publish_run(tmp_path / "run" / "junit.xml", db)
    assert lines[0].startswith(f"pkvmlab: history not updated ({db}): ")
    assert lines[1].startswith(f"pkvmlab: no trend view ({db}): ")
    assert lines[2] == f"pkvmlab: HTML report {tmp_path / 'run' / 'report.html'}"
    assert "<h2>Trends</h2>" not in (tmp_path / "run" / "report.html").read_text()


def test_an_unreadable_junit_is_reported(tmp_path):
    lines = publish_run(tmp_path / "missing.xml", tmp_path / "history.sqlite")
    assert all("missing.xml" in line for line in lines) and len(lines) == 2


def test_allure_categories_beside_the_junit_match_the_findings_messages(tmp_path):
    """Allure matches a category's messageRegex against the whole message (Java's matches()): fullmatch."""
    import json
    import re

    from pkvmlab.report.junit import load_suites
    runs = Path(__file__).parent / "fixtures" / "runs"
    for name in ("finding", "strict", "virt-host", "virt-1"):
        shutil.copytree(runs / name, tmp_path / name)
        publish_run(tmp_path / name / "junit.xml", tmp_path / "history.sqlite", record=False)
        categories = json.loads((tmp_path / name / "categories.json").read_text())
        status = {"waived": "skipped", "artifact": "skipped", "finding": "failed"}
        (suite,) = load_suites(tmp_path / name / "junit.xml")
        for case in suite.cases:
            matched = [c["name"] for c in categories if status.get(case.kind) in c["matchedStatuses"]
                       and re.fullmatch(c["messageRegex"], case.message, re.DOTALL)]
            expected = {"waived": ["pkvmlab: finding (waived)"], "artifact": ["pkvmlab: emulator artifact (waived)"],
                        "finding": ["pkvmlab: finding (strict mode)"]}.get(case.kind, [])
            assert matched == expected, (name, case.name, case.kind)
