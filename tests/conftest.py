"""The project's own tests: every test gets a deadline, so a hang fails in CI instead of eating its budget.

Board runs the tests start are bounded by their own timeouts; this is the net
below them (pytest-timeout, a dev dependency).
"""

import pytest

TEST_DEADLINE_SECONDS = 600


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_DEADLINE_SECONDS))
