"""Issue 5's "done when" on real runs of the QEMU board, not on fixtures.

One module fixture boots everything once (two boards at a time: TCG QEMU uses
about a core each): a qemu-virt run (boot + pvm suites, plus a tiny test whose
verdict an environment variable decides), a qemu-virt-el1 run, a matrix run
(trixie-backports x nvhe, default), a second qemu-virt run whose tiny test
fails, and a run of a copy of the qemu-virt board file that expects the wrong
boot EL.  The tests then merge, validate, record history and render with the
same ``pkvmlab`` command a lab uses.
"""

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest
import xmlschema

from pkvmlab.report.chromium import INSTALL_HINT, dump_dom, find_chromium
from pkvmlab.report.history import board_trend, flaky_tests
from pkvmlab.report.junit import PASSED, XFAILED, load_suites

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = xmlschema.XMLSchema(str(Path(__file__).parent / "schemas" / "junit-10.xsd"))
pytestmark = pytest.mark.qemu
needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason=f"chromium is not installed; install it with: {INSTALL_HINT}")

FLIP_TEST = '''\
import os


def test_flip():
    verdict = os.environ.get("PKVMLAB_FLIP", "pass")
    assert verdict == "pass", f"PKVMLAB_FLIP={verdict}: this test was told to fail"
'''
# Colours of templates/report.css as Chromium paints them: pass, known finding (xfail), skip.
PASS_RGB, XFAIL_RGB, SKIP_RGB = (0xC9, 0xEF, 0xC4), (0xE6, 0xD9, 0xF5), (0xE6, 0xE6, 0xE6)


def pkvmlab(*args, env=None, timeout=300):
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pkvmlab.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})
    proc.seconds = round(time.monotonic() - started, 1)
    return proc


def output(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    reports = root / "reports"
    flip = root / "extra" / "test_flip.py"
    flip.parent.mkdir()
    flip.write_text(FLIP_TEST)
    wrong = root / "boards" / "qemu-virt-wrong.yaml"
    wrong.parent.mkdir()
    board = (ROOT / "boards" / "qemu-virt.yaml").read_text()
    assert "name: qemu-virt\n" in board and "boot_el: EL2" in board
    wrong.write_text(board.replace("name: qemu-virt\n", "name: qemu-virt-wrong\n")
                     .replace("boot_el: EL2", "boot_el: EL1"))
    boot, pvm = str(ROOT / "suites" / "boot"), str(ROOT / "suites" / "pvm")

    def run(board, run_id, *paths, flip_to=None):
        return pkvmlab("run", "--board", board, "--reports", str(reports), "--run-id", run_id, *paths,
                       "-p", "no:cacheprovider", env={"PKVMLAB_FLIP": flip_to} if flip_to else None)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = [pool.submit(run, "qemu-virt", "virt-1", boot, pvm, str(flip), flip_to="pass"),
                 pool.submit(run, "qemu-virt-el1", "el1", boot, pvm)]
        virt1, el1 = (f.result() for f in first)
    matrix = pkvmlab("matrix", "--kernels", "trixie-backports", "--modes", "nvhe,default", "--reports", str(reports))
    with ThreadPoolExecutor(max_workers=2) as pool:
        last = [pool.submit(run, "qemu-virt", "virt-2", boot, str(flip), flip_to="fail"),
                pool.submit(run, str(wrong), "wrong", boot)]
        virt2, wrong_run = (f.result() for f in last)
    (matrix_dir,) = reports.glob("matrix-*")
    result = {"root": root, "reports": reports, "virt-1": virt1, "el1": el1, "matrix": matrix, "virt-2": virt2,
              "wrong": wrong_run, "matrix_dir": matrix_dir, "seconds": round(time.monotonic() - started, 1)}
    print(f"\nreal runs: {result['seconds']} s in all; " + ", ".join(
        f"{name} {result[name].seconds} s" for name in ("virt-1", "el1", "matrix", "virt-2", "wrong")))
    return result


def junit_of(runs, name):
    return runs["matrix_dir"] / "junit.xml" if name == "matrix" else runs["reports"] / name / "junit.xml"


@pytest.fixture(scope="module")
def kernel(runs):
    (suite,) = load_suites(junit_of(runs, "virt-1"))
    release = suite.prop("kernel_release")
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*-arm64", release), release
    return release


@pytest.fixture(scope="module")
def stack(runs):
    """The emulator and CPU model part of a QEMU board's suite name: ``/qemu-10.0.2/max``."""
    (suite,) = load_suites(junit_of(runs, "virt-1"))
    assert re.fullmatch(r"qemu-\d+\.\d+\.\d+", suite.prop("emulator")), suite.prop("emulator")
    return f"/{suite.prop('emulator')}/{suite.prop('cpu').split(',')[0]}"


@pytest.fixture(scope="module")
def merged(runs):
    lab = runs["root"] / "lab" / "junit.xml"
    proc = pkvmlab("report", "merge", "-o", str(lab), *(str(junit_of(runs, n)) for n in ("virt-1", "el1", "matrix")))
    assert proc.returncode == 0, output(proc)
    return lab


@pytest.fixture(scope="module")
def history(runs):
    db = runs["root"] / "lab" / "history.sqlite"
    proc = pkvmlab("report", "history", "record", "--db", str(db),
                   *(str(junit_of(runs, n)) for n in ("virt-1", "el1", "matrix", "virt-2")))
    assert proc.returncode == 0, output(proc)
    return db


def test_every_run_wrote_junit_that_jenkins_accepts(runs):
    for name, expected_exit in (("virt-1", 0), ("el1", 0), ("matrix", 0), ("virt-2", 1), ("wrong", 1)):
        assert runs[name].returncode == expected_exit, f"{name}: {output(runs[name])}"
        SCHEMA.validate(str(junit_of(runs, name)))


def test_merge_gives_one_valid_junit_with_a_suite_per_board_kernel_mode(runs, merged, kernel, stack):
    SCHEMA.validate(str(merged))
    root = ET.parse(merged).getroot()
    assert root.tag == "testsuites" and "skipped" not in root.attrib
    names = [suite.get("name") for suite in root.findall("testsuite")]
    assert names == [f"qemu-virt/{kernel}/protected{stack}", f"qemu-virt-el1/{kernel}/protected{stack}",
                     f"qemu-virt/{kernel}/nvhe{stack}", f"qemu-virt/{kernel}/default{stack}"]
    inputs = {s.name: s for n in ("virt-1", "el1", "matrix") for s in load_suites(junit_of(runs, n))}
    for suite in load_suites(merged):
        source = inputs[suite.name]
        # Every property kept, in order; only log paths are re-based onto the merged file's directory.
        assert [n for n, _ in suite.property_list] == [n for n, _ in source.property_list]
        for (name, value), (_, original) in zip(suite.property_list, source.property_list, strict=True):
            if name.endswith(".console_log"):
                assert (merged.parent / value).resolve() == (source.source.parent / original).resolve()
                assert (merged.parent / value).is_file()
            else:
                assert value == original, name
        assert [(c.name, c.outcome, c.message) for c in suite.cases] == [
            (c.name, c.outcome, c.message) for c in source.cases]
    ids = [(case.get("classname"), case.get("name")) for case in root.iter("testcase")]
    assert len(ids) == len(set(ids)), "GitLab counts a classname+name once: every case must be unique"
    totals = {key: sum(int(s.get(key)) for s in root.findall("testsuite")) for key in ("tests", "failures", "errors")}
    assert {key: int(root.get(key)) for key in totals} == totals


def test_merge_rejects_a_malformed_input_with_its_path_and_merges_the_rest(runs, tmp_path, kernel, stack):
    broken = tmp_path / "broken" / "junit.xml"
    broken.parent.mkdir()
    text = junit_of(runs, "el1").read_text()
    broken.write_text(text[: len(text) // 2])       # a run killed while writing without pkvmlab's atomic write
    out = tmp_path / "lab" / "junit.xml"
    proc = pkvmlab("report", "merge", "-o", str(out), str(junit_of(runs, "virt-1")), str(broken))
    assert proc.returncode == 1, output(proc)
    assert f"rejected {broken}: not well-formed XML:" in proc.stderr
    SCHEMA.validate(str(out))
    assert [s.name for s in load_suites(out)] == [f"qemu-virt/{kernel}/protected{stack}"]


def test_a_failing_check_carries_its_console_excerpt_and_the_log_path(runs, tmp_path):
    junit = junit_of(runs, "wrong")
    SCHEMA.validate(str(junit))
    (suite,) = load_suites(junit)
    case = next(c for c in suite.cases if c.name == "test_boot_el")
    assert case.outcome == "failed" and "expected every CPU to start at EL1, the kernel says EL2" in case.message
    log = runs["reports"] / "wrong" / "console.log"
    assert f"full log: {log}]" in case.system_out
    console = log.read_text(errors="replace").replace("\r", "")
    from pkvmlab.report.cases import pkvmlab_block
    console_part, block = pkvmlab_block(case.system_out)
    assert "[[ATTACHMENT|console.log]]" in block     # the case's own pkvmlab block, after the excerpt
    excerpt = [line.replace("#x1B", "\x1b") for line in console_part.splitlines()
               if line.strip() and line != "[...]" and not line.startswith(("[console:", "-----"))]
    assert len(excerpt) >= 10
    missing = [line for line in excerpt if line not in console]
    assert not missing, f"excerpt lines not in {log}: {missing[:5]}"
    assert suite.prop("console_log") == "console.log"
    assert (junit.parent / suite.properties["test_boot_el.console_log"]).resolve() == log.resolve()
    # Passing cases carry only their measured values (the pkvmlab block), no console excerpt.
    assert all(pkvmlab_block(c.system_out)[0].strip() == "" for c in suite.cases if c.outcome == PASSED)
    # Merged elsewhere, the excerpt stays and the property still leads to the log.
    out = tmp_path / "elsewhere" / "junit.xml"
    proc = pkvmlab("report", "merge", "-o", str(out), str(junit))
    assert proc.returncode == 0, output(proc)
    SCHEMA.validate(str(out))
    (again,) = load_suites(out)
    merged_out = next(c for c in again.cases if c.name == "test_boot_el").system_out
    assert pkvmlab_block(merged_out)[0] == console_part
    # The attachment is re-based onto the merged file's directory, as the console_log property is.
    (attached,) = re.findall(r"\[\[ATTACHMENT\|([^\]]+)\]\]", merged_out)
    assert (out.parent / attached).resolve() == log.resolve()
    assert (out.parent / again.properties["test_boot_el.console_log"]).resolve() == log.resolve()


def test_second_run_of_a_board_is_in_the_trend_and_the_flipped_test_is_flaky(runs, history, kernel, stack):
    suite = f"qemu-virt/{kernel}/protected{stack}"
    points = [p for p in board_trend(history, board="qemu-virt") if p.suite == suite]
    assert [p.run_id for p in points] == ["virt-1", "virt-2"]
    assert all(p.boot_seconds and 1 < p.boot_seconds < 60 for p in points)
    (second,) = load_suites(junit_of(runs, "virt-2"))     # the boot suite and the flip test, which failed
    boot_passed = sum(c.outcome == PASSED for c in second.cases if c.name != "test_flip")
    assert boot_passed >= 8 and boot_passed == len(second.cases) - 1 - second.counts()["skipped"]
    assert points[0].pass_rate == 1.0 and points[1].failed == 1 and points[1].passed == boot_passed
    flaky = flaky_tests(history)
    assert [(f.suite, f.test, f.flips) for f in flaky] == [(suite, "test_flip", 1)]
    assert [(run, outcome) for run, _, outcome in flaky[0].history] == [("virt-1", "passed"), ("virt-2", "failed")]
    proc = pkvmlab("report", "history", "show", "--db", str(history), "--board", "qemu-virt")
    assert proc.returncode == 0 and "flaky tests: 1" in proc.stdout and "test_flip" in proc.stdout, output(proc)


class Page(HTMLParser):
    """The page as Chromium has laid it out: matrix cells, facts, notes, flaky rows, chart points, links."""

    def __init__(self, text):
        super().__init__()
        self.cells, self.text, self.facts, self.notes, self.flaky = {}, {}, {}, {}, []
        self.points, self.links = Counter(), []
        self._into, self._chart = None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td" and "data-outcome" in a:
            key = (a["data-suite"], a["data-check"])
            self.cells[key] = a["data-outcome"]
            self._into = (self.text, key)
        elif tag == "td" and "data-fact" in a:
            self._into = (self.facts, (a["data-suite"], a["data-fact"]))
        elif tag == "li" and "data-note" in a:
            self._into = (self.notes, a["data-note"])
        if self._into and self._into[1] not in self._into[0]:
            self._into[0][self._into[1]] = ""
        if tag == "tr" and "data-test" in a:
            self.flaky.append((a["data-suite"], a["data-test"]))
        if tag == "figure" and "data-chart" in a:
            self._chart = a["data-chart"]
        if tag == "circle" and self._chart:
            self.points[(self._chart, a.get("data-series"))] += 1
        if tag == "a" and not a.get("href", "#").startswith("#"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "li"):
            self._into = None
        if tag == "figure":
            self._chart = None

    def handle_data(self, data):
        if self._into:
            self._into[0][self._into[1]] += data

    def note(self, key):
        """The note a skipped or finding cell points to (the number after its label, ``record.KINDS``)."""
        number = re.match(r"(?:skip|finding \(waived\)|emulator artifact|FINDING)(\d+)", self.text[key]).group(1)
        return self.notes[number]


@pytest.mark.chromium
@needs_chromium
def test_html_of_the_merged_report_renders_the_matrix_in_chromium(runs, merged, history, kernel, stack):
    from test_report_html import read_png

    proc = pkvmlab("report", "html", str(merged), "--history", str(history), "--screenshot")
    assert proc.returncode == 0, output(proc)
    page, png = merged.parent / "report.html", merged.parent / "report.png"
    assert proc.stdout.split() == [str(page), "(trends", "from", f"{history})", str(png)]
    dom = Page(dump_dom(page, timeout=90))

    virt, el1 = f"qemu-virt/{kernel}/protected{stack}", f"qemu-virt-el1/{kernel}/protected{stack}"
    nvhe, vhe = f"qemu-virt/{kernel}/nvhe{stack}", f"qemu-virt/{kernel}/default{stack}"
    suites = load_suites(merged)
    outcomes = {(s.name, c.name): c.outcome for s in suites for c in s.cases}
    assert {key: outcome for key, outcome in dom.cells.items() if outcome != "missing"} == outcomes
    assert {key for key, outcome in dom.cells.items() if outcome == "missing"} == {
        (s, "test_flip") for s in (el1, nvhe, vhe)}        # the extra test ran on virt-1 only
    checks = {check for _, check in dom.cells}
    assert {"test_boot_el", "test_kvm_mode", "test_create[protected]", "test_host_read[protected]",
            "test_teardown[protected]", "test_flip"} <= checks
    # The measured facts head each column.
    assert {s: dom.facts[(s, "boot EL")] for s in (virt, el1, nvhe, vhe)} == {
        virt: "EL2", el1: "EL1", nvhe: "EL2", vhe: "EL2"}
    assert dom.facts[(virt, "KVM mode")].startswith("protected-") and dom.facts[(el1, "KVM mode")] == "none"
    assert dom.facts[(nvhe, "KVM mode")] == "nvhe" and dom.facts[(vhe, "KVM mode")] == "vhe"
    assert all(0 < float(dom.facts[(s, "boot seconds")]) < 60 for s in (virt, el1, nvhe, vhe))
    assert dom.facts[(virt, "pVM create")] == "ok" and dom.facts[(vhe, "pVM create")].startswith("refused")
    assert dom.facts[(virt, "host read of pVM page")].startswith("fault: SIGSEGV")
    assert dom.facts[(el1, "pVM create")] == "—"
    # Outcomes with what was measured; skips and known findings with their reasons.
    assert dom.cells[(virt, "test_host_read[protected]")] == PASSED
    assert "fault: SIGSEGV" in dom.text[(virt, "test_host_read[protected]")]
    assert dom.cells[(el1, "test_host_read[protected]")] == "skipped"
    assert "no /dev/kvm: host booted at EL1" in dom.note((el1, "test_host_read[protected]"))
    # Every skip and known finding (xfail) points to its reason, as the JUnit gives it.
    messages = {(s.name, c.name): c.message for s in suites for c in s.cases}
    for key, outcome in outcomes.items():
        if outcome in ("skipped", XFAILED):
            assert messages[key].strip() in dom.note(key), key
    # On QEMU >= 10 the protected guest's page is wiped at teardown: QEMU 7.2's artifact does not show.
    assert dom.cells[(virt, "test_teardown_min[protected]")] != XFAILED
    # Links lead to the logs and JUnit files; the trend has both qemu-virt runs; the flipped test is flaky.
    assert sum(link.endswith("console.log") for link in dom.links) == 4
    for link in dom.links:
        assert (page.parent / link).is_file(), link
    assert dom.points[("qemu-virt: boot seconds", f"{kernel}/protected{stack}")] == 2
    assert dom.flaky == [(virt, "test_flip")]

    # The screenshot, saved with the report, shows the matrix painted.
    width, height, pixels = read_png(png)
    assert width == 1400 and 2000 < height < 12000 and png.stat().st_size > 50_000   # the whole page
    counts = Counter(pixels)
    colours = [("pass", PASS_RGB), ("skip", SKIP_RGB)]
    if XFAILED in outcomes.values():
        colours.append(("known finding", XFAIL_RGB))
    for name, colour in colours:
        painted = sum(n for px, n in counts.items() if all(abs(a - b) <= 3 for a, b in zip(px, colour, strict=True)))
        assert painted > 2000, f"no {name} cells painted in {png}"
