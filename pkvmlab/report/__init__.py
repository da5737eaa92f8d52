"""Lab reports: JUnit merge, self-contained HTML, and a run history.

Dashboards (Jenkins, GitLab) ingest the JUnit; people read the HTML.  Every
file written here is checked first (JUnit against Jenkins' ``junit-10.xsd``)
and replaced atomically, so a dashboard never reads half a report.

Modules, one job each: ``record`` (the run-record contract: identity, property
names, outcome kinds), ``identity`` (the classname rule), ``cases`` (finishing
pytest's JUnit for dashboards), ``atomic`` (safe writes), ``junit`` (schema +
reading), ``merge``, ``history`` (SQLite of runs), ``table`` (the model: one
column per board × kernel × mode, each check's history), ``html`` and
``markdown`` (its renderings, from ``templates/``), ``charts`` (trend geometry),
``chromium`` (headless rendering), ``publish``, ``cli``.
"""
