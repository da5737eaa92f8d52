"""The stored sample runs are what pytest writes today (regenerate with tests/fixtures/junit/generate.py).

The report tests read stored files so they are fast and repeatable; this test
runs the generator again (real pytest, ~5 s) and fails when pytest's output has
drifted from the stored files in anything the report code reads.
PKVMLAB_REGEN_FIXTURES=1 rewrites the stored files instead.
"""

import importlib.util
import os
from pathlib import Path

import pytest

from pkvmlab.report.junit import load_suites, validate_junit

FIXTURES = Path(__file__).parent / "fixtures" / "junit"


def _generator():
    spec = importlib.util.spec_from_file_location("pkvmlab_junit_fixtures", FIXTURES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(path):
    """Everything the report code reads, minus what changes per run (times, timestamps, host, tmp paths)."""
    return [(s.name, s.property_list, s.counts(),
             [(c.classname, c.name, c.outcome, c.message, c.system_out) for c in s.cases])
            for s in load_suites(path)]


def test_stored_runs_match_a_fresh_pytest_run(tmp_path):
    generate = _generator()
    if os.environ.get("PKVMLAB_REGEN_FIXTURES"):
        generate.generate(FIXTURES)
    fresh = generate.generate(tmp_path)
    assert [d.name for d in fresh] == sorted(p.parent.name for p in FIXTURES.glob("2*/junit.xml"))
    for run_dir in fresh:
        stored = FIXTURES / run_dir.name
        assert validate_junit(run_dir / "junit.xml") == []
        assert _shape(run_dir / "junit.xml") == _shape(stored / "junit.xml"), run_dir.name
        assert (run_dir / "console.log").read_text() == (stored / "console.log").read_text()
    assert validate_junit(tmp_path / generate.XUNIT1 / "junit.xml") != []
    with pytest.raises(Exception, match="not well-formed"):
        load_suites(tmp_path / generate.TRUNCATED / "junit.xml")
