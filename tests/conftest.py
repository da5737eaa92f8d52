"""The project's own tests: every test gets a deadline, so a hang fails in CI instead of eating its budget.

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


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_DEADLINE_SECONDS))


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
