"""The stored sample runs are what pytest and pkvmlab write today (regenerate with tests/fixtures/*/generate.py).

The report tests read stored files so they are fast and repeatable.  ``fixtures/runs`` are real runs
of the real suites on the QEMU board (``pkvmlab run``): the page, history and contract tests read
them, and the second test here runs one of them again (~12 s) and fails when what pkvmlab writes has
drifted from the stored shape.  ``fixtures/junit`` are older synthetic pytest runs kept for the JUnit
edge cases a healthy board does not produce (a probe that errors in setup, a kernel that cannot
create pVMs, a file cut mid-write, xunit1); the first test runs their generator again (real pytest,
~5 s).  PKVMLAB_REGEN_FIXTURES=1 rewrites the synthetic ones instead.
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


RUNS = Path(__file__).parent / "fixtures" / "runs"


def _run_shape(path):
    """What the report code reads of a real run, minus what changes per run (values, times, hashes)."""
    (suite,) = load_suites(path)
    return (sorted(name for name, _ in suite.property_list),
            [(c.classname, c.name, c.kind) for c in suite.cases])


@pytest.mark.qemu
def test_stored_real_runs_match_a_fresh_run_of_the_real_suites(tmp_path):
    """``virt-1`` again, as generate.py runs it: the same properties, identities, checks and kinds."""
    spec = importlib.util.spec_from_file_location("pkvmlab_run_fixtures", RUNS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    (fresh,) = generate.generate(tmp_path, only={"virt-1"})
    assert validate_junit(fresh / "junit.xml") == []
    assert _run_shape(fresh / "junit.xml") == _run_shape(RUNS / "virt-1" / "junit.xml"), \
        "what pkvmlab run writes changed: regenerate with tests/fixtures/runs/generate.py"
    assert (fresh / "console.log").stat().st_size > 10_000
