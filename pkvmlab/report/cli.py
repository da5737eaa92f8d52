"""``pkvmlab report ...``: merge, html and history, as argparse subcommands the main CLI mounts.

    pkvmlab report merge -o OUT IN...                 one JUnit file from many runs and boards
    pkvmlab report html [-o OUT] [--history DB] [--screenshot] JUNIT
    pkvmlab report history record [--db DB] JUNIT...
    pkvmlab report history show [--db DB] [--board BOARD]

Exit codes: 0 ok; 1 an input was rejected (the rest merged) or nothing could
be merged; 2 a usage or input error (a JUNIT that cannot be read); 3 the
host lacks a tool (chromium for --screenshot).
"""

import sys
from pathlib import Path

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3


def default_history():
    """``reports/history.sqlite`` of the checkout: where runs are recorded unless told otherwise."""
    from ..boards import project_root
    return project_root() / "reports" / "history.sqlite"


def add_parser(subparsers):
    """Add ``report`` and its subcommands to the main parser's ``subparsers``."""
    report = subparsers.add_parser("report", help="merge JUnit, render HTML, keep a history of runs")
    sub = report.add_subparsers(dest="report_command", required=True)

    merge = sub.add_parser("merge", help="merge JUnit files of runs and boards into one (schema-checked)")
    merge.add_argument("-o", "--output", required=True, type=Path, help="merged JUnit file to write")
    merge.add_argument("--name", default="pkvmlab", help="name of the <testsuites> element")
    merge.add_argument("inputs", nargs="+", type=Path, metavar="IN", help="JUnit files to merge")
    merge.set_defaults(func=cmd_merge)

    html = sub.add_parser("html", help="one self-contained HTML page for a run or a merged report")
    html.add_argument("junit", type=Path, metavar="JUNIT")
    html.add_argument("-o", "--output", type=Path, help="page to write (default: report.html beside JUNIT)")
    which = html.add_mutually_exclusive_group()
    which.add_argument("--history", type=Path, metavar="DB",
                       help="history database for the trend view (default: reports/history.sqlite if present)")
    which.add_argument("--no-history", action="store_true", help="leave the trend view out")
    html.add_argument("--title", help="page title")
    html.add_argument("--screenshot", action="store_true",
                      help="also save a PNG of the page rendered by headless chromium (OUT with .png)")
    html.set_defaults(func=cmd_html)

    history = sub.add_parser("history", help="the SQLite history of runs").add_subparsers(
        dest="history_command", required=True)
    record = history.add_parser("record", help="add runs (JUnit files) to the history")
    record.add_argument("junit", nargs="+", type=Path, metavar="JUNIT")
    record.add_argument("--db", type=Path, help="history database (default: reports/history.sqlite)")
    record.set_defaults(func=cmd_history_record)
    show = history.add_parser("show", help="boot time and pass rate per board, and flaky tests")
    show.add_argument("--db", type=Path, help="history database (default: reports/history.sqlite)")
    show.add_argument("--board", help="only this board")
    show.set_defaults(func=cmd_history_show)
    return report


def _err(message):
    print(f"pkvmlab: error: {message}", file=sys.stderr)


def cmd_merge(args):
    from .merge import merge_junit
    missing = [str(p) for p in args.inputs if not p.exists()]
    if len(missing) == len(args.inputs):
        _err(f"no input exists: {', '.join(missing)}")
        return EXIT_USAGE
    result = merge_junit(args.inputs, args.output, name=args.name)
    for rejected in result.rejected:
        _err(f"rejected {rejected}")
    for note in result.notes:
        print(f"pkvmlab: note: {note}", file=sys.stderr)
    if result.written:
        print(f"{result.output}: {len(result.suites)} suites from "
              f"{len(args.inputs) - len(result.rejected)} of {len(args.inputs)} files")
    return result.exit_code


def cmd_html(args):
    from .chromium import screenshot
    from .html import render_html
    from .junit import JUnitReadError
    history = None
    if not args.no_history:
        history = args.history or (default_history() if default_history().is_file() else None)
    try:
        output = render_html(args.junit, args.output, history=history, title=args.title)
    except JUnitReadError as err:
        _err(str(err))
        return EXIT_USAGE
    print(f"{output}" + (f" (trends from {history})" if history else ""))
    if args.screenshot:
        from ..errors import InfrastructureError
        try:
            png = screenshot(output, output.with_suffix(".png"), height=None)   # the whole page
        except InfrastructureError as err:
            _err(str(err))
            return EXIT_INFRA
        print(png)
    return EXIT_OK


def cmd_history_record(args):
    from .history import record_run
    from .junit import JUnitReadError
    db = args.db or default_history()
    status = EXIT_OK
    for path in args.junit:
        try:
            points = record_run(db, path)
        except JUnitReadError as err:
            _err(str(err))
            status = EXIT_USAGE
            continue
        for p in points:
            print(f"{db}: recorded {p.run_id} {p.suite}: {p.passed} passed, {p.failed} failed, "
                  f"{p.errors} errors, {p.xfailed} known findings (xfail), {p.skipped} skipped")
    return status


def cmd_history_show(args):
    from .history import board_trend, flaky_tests
    db = args.db or default_history()
    if not db.is_file():
        _err(f"no history at {db}: record runs with 'pkvmlab report history record JUNIT'")
        return EXIT_USAGE
    print(f"{'board':14} {'run':54} {'kernel/mode':34} {'boot s':>7} {'pass %':>7}")
    for p in board_trend(db, board=args.board):
        boot = f"{p.boot_seconds:.2f}" if p.boot_seconds is not None else "-"
        rate = f"{100 * p.pass_rate:.0f}" if p.pass_rate is not None else "-"
        print(f"{p.board:14} {p.run_id:54} {p.suite.split('/', 1)[-1]:34} {boot:>7} {rate:>7}")
    flaky = [f for f in flaky_tests(db) if not args.board or f.suite.split("/")[0] == args.board]
    print(f"\nflaky tests: {len(flaky)}")
    for f in flaky:
        print(f"  {f.suite}  {f.test}: {f.flips} flips  ({' '.join(o for _, _, o in f.history)})")
    return EXIT_OK
