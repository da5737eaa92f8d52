"""Lab reports: JUnit merge, self-contained HTML, and a run history.

Dashboards (Jenkins, GitLab) ingest the JUnit; people read the HTML.  Every
file written here is checked first (JUnit against Jenkins' ``junit-10.xsd``)
and replaced atomically, so a dashboard never reads half a report.

Modules, one job each: ``atomic`` (safe writes), ``junit`` (schema + reading),
``merge``, ``history`` (SQLite of runs), ``table`` (the matrix model),
``html`` (the page), ``chromium`` (headless rendering), ``cli``.
"""
