"""pytest glue: options, a booted board per session, facts and measured values into JUnit.

Loaded by the repository's ``conftest.py`` (``pytest_plugins``) or ``-p pkvmlab.plugin``.
Inactive unless a board is chosen (``--board`` or an environment whose
``options.pkvmlab_board`` names one), so the project's own tests run with it loaded.
"""

from .fixtures import board, booted, measured, pkvmlab_run, suite_property  # noqa: F401
from .hooks import (  # noqa: F401
    pytest_addoption,
    pytest_collection,
    pytest_collection_finish,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_logreport,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
    pytest_unconfigure,
)
