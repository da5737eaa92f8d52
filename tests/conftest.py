"""The project's own tests: every test gets a deadline, so a hang fails in CI instead of eating its budget;
the longest modules are started first.

Board runs the tests start are bounded by their own timeouts; this is the net
below them (pytest-timeout, a dev dependency).
"""

import os
import sys
from pathlib import Path

import pytest

TEST_DEADLINE_SECONDS = 600

# The Pixel simulator's adb and fastboot (pkvmlab/sim/bin) start with `/usr/bin/env python3`; where the
# first python3 on PATH is pyenv's shim (as on this project's machines) each call costs 65 ms more than
# the interpreter itself (measured: 105 against 39 ms), ~30 calls a simulated run.  The interpreter
# running the tests comes first instead.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


# The modules that take longest, longest first (seconds with two workers, measured with --durations on the
# 2-core CI machine): the README runs the tests on two pytest-xdist workers, a module to a worker at a time
# (`--dist loadfile`: a module's fixtures boot once), in collection order; started last, a long module
# kept one worker busy for a minute after the other had finished (288 s in all).
LONGEST_FIRST = ("test_dashboards.py", "test_lab.py", "test_report_real_runs.py", "test_faults.py",
                 "test_devboards.py", "test_pvm_board.py", "test_no_orphans.py", "test_qemu_board.py",
                 "test_report_fixtures.py", "test_pixel_avf.py", "test_pixel_phone.py", "test_qemuprestart.py")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_DEADLINE_SECONDS))
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: each module's order stays


@pytest.fixture
def simdir(tmp_path, monkeypatch):
    """A fresh Pixel simulator state directory (pkvmlab/sim/pixel.py), at time scale 0 (no simulated waits)."""
    from pkvmlab.sim import pixel as sim
    directory = tmp_path / "sim"
    directory.mkdir()
    monkeypatch.setenv(sim.ENV_DIR, str(directory))
    monkeypatch.setenv(sim.ENV_TIME_SCALE, "0")
    monkeypatch.setenv(sim.ENV_WAIT, "1")
    return directory
