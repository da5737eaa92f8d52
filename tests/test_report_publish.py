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
