"""Get the report's tools ready while the board boots.

Writing a run's report needs xmlschema's parse of ``junit-10.xsd``, Jinja2's
compile of the page template and the report modules imported: about 0.25 s of
CPU (measured) that would otherwise come after the last test.  While the board
boots the harness only waits on its console (a booting QEMU ``virt`` board
keeps about 1.25 of this machine's 2 cores busy), so a thread does that work
then.  The report code calls the same cached functions (``junit_schema``,
``html.environment``) and finds them ready; it never waits for this thread,
whose only effect is a warm cache.
"""

import threading


def _prepare():
    try:
        from . import publish  # noqa: F401 - the history, page and Allure modules
        from .html import environment
        from .junit import junit_schema
        junit_schema()
        environment().get_template("report.html.j2")
    except Exception:  # noqa: BLE001, S110 - the report step meets the same error and reports it there
        pass


def prepare_report():
    """Start preparing the report in a daemon thread; returns the thread."""
    thread = threading.Thread(target=_prepare, name="pkvmlab-report-warmup", daemon=True)
    thread.start()
    return thread
