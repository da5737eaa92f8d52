"""Imported only as the matrix's forkserver preload (``pkvmlab/cellserver.py``): warms the server.

Importing it does what every matrix cell would otherwise do first: pytest,
labgrid (with its pytest plugin and gRPC client) and pkvmlab's plugin imported,
pkvmlab's drivers registered with labgrid's target factory, xmlschema's parse of
``junit-10.xsd`` and the report page's template compiled into their caches.  Every
cell forked from the server finds them done.  Nothing here starts a thread: the
server must be single-threaded when it forks.
"""

import _pytest.junitxml  # noqa: F401
import labgrid  # noqa: F401
import labgrid.pytestplugin  # noqa: F401
import pytest  # noqa: F401

import pkvmlab.lab  # noqa: F401
import pkvmlab.plugin.fixtures  # noqa: F401
import pkvmlab.plugin.hooks  # noqa: F401
import pkvmlab.report.publish  # noqa: F401
from pkvmlab.report.html import environment
from pkvmlab.report.junit import junit_schema

junit_schema()
environment().get_template("report.html.j2")
