"""The HTML report: one column per board × kernel × mode with each check's history, findings called out,
self-contained, what the JUnit says, and Chromium renders it so.

Read from the stored real runs (``tests/fixtures/runs``, made by running the real suites on the QEMU
board: ``generate.py`` there): eight runs of six combinations, two of which ran twice.
"""

import argparse
import re
import shutil
import struct
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pkvmlab.report import cli, record
from pkvmlab.report.chromium import INSTALL_HINT, ChromiumMissing, dump_dom, find_chromium, screenshot
from pkvmlab.report.history import record_run
from pkvmlab.report.html import render_html
from pkvmlab.report.junit import load_suites
from pkvmlab.report.merge import merge_junit

RUNS_DIR = Path(__file__).parent / "fixtures" / "runs"
RUNS = sorted(RUNS_DIR.glob("*/junit.xml"))
ROOT = Path(__file__).resolve().parent.parent

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason=f"chromium is not installed; install it with: {INSTALL_HINT}")

# The cell backgrounds in templates/report.css, as a browser paints them.
PASS_RGB, FAIL_RGB, XFAIL_RGB, SKIP_RGB = (0xC9, 0xEF, 0xC4), (0xF5, 0xB8, 0xB8), (0xE6, 0xD9, 0xF5), (0xE6,) * 3


class PageReader(HTMLParser):
    """What a reader of the page can find: columns, cells (kind, history, flips), findings, notes, links."""

    def __init__(self):
        super().__init__()
        self.columns, self.cells, self.kinds, self.cell_text = [], {}, {}, {}
        self.history, self.flips, self.kernel_marks = {}, {}, Counter()
        self.findings, self.flaky, self.links, self.ids, self.assets = [], [], [], [], []
        self.notes, self.headers, self.svgs = {}, {}, 0
        self._cell = self._note = self._header = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "th" and "data-column" in attrs:
            self.columns.append((attrs["data-column"], attrs["data-suite"]))
            self._header = attrs["data-suite"]
            self.headers[self._header] = ""
        if tag == "td" and "data-outcome" in attrs:
            self._cell = (attrs["data-suite"], attrs["data-check"])
            self.cells[self._cell] = attrs["data-outcome"]
            self.kinds[self._cell] = attrs["data-kind"]
            self.cell_text[self._cell] = ""
        if self._cell and tag == "div" and "data-runs" in attrs:
            self.history[self._cell] = []
        if self._cell and tag == "span" and "h" in attrs.get("class", "").split():
            self.history[self._cell].append(attrs["data-kind"])
        if self._cell and tag == "span" and attrs.get("class") == "kchange":
            self.kernel_marks[self._cell] += 1
        if self._cell and "data-flips" in attrs:
            self.flips[self._cell] = int(attrs["data-flips"])
        if tag == "tr" and "data-finding" in attrs:
            self.findings.append((attrs["data-suite"], attrs["data-check"], attrs["data-finding"]))
        if tag == "li" and "data-note" in attrs:
            self._note = attrs["data-note"]
            self.notes[self._note] = ""
        if tag == "tr" and "data-test" in attrs:
            self.flaky.append((attrs["data-suite"], attrs["data-test"]))
        if tag == "a":
            self.links.append(attrs.get("href", ""))
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag in ("script", "link", "img", "iframe", "object", "embed") or "src" in attrs:
            self.assets.append((tag, attrs))
        if tag == "svg":
            self.svgs += 1

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        if tag == "li":
            self._note = None
        if tag == "th":
            self._header = None

    def handle_data(self, data):
        if self._cell:
            self.cell_text[self._cell] += data
        if self._note:
            self.notes[self._note] += data
        if self._header:
            self.headers[self._header] += data

    def note_of(self, cell):
        """The text of the note a cell points to (the number after its label)."""
        label = r"\s*(?:skip|finding \(waived\)|emulator artifact|FINDING)(\d+)"
        number = re.match(label, self.cell_text[cell]).group(1)
        return self.notes[number]


def read_page(text):
    reader = PageReader()
    reader.feed(text)
    return reader


def latest_per_combination(junit):
    """What the page must show, worked out from the JUnit alone: per identity, its runs oldest first."""
    by_identity = {}
    for suite in load_suites(junit):
        by_identity.setdefault(suite.identity, []).append(suite)
    return {identity: sorted(suites, key=lambda s: s.prop("started")) for identity, suites in by_identity.items()}


def expected_cells(junit):
    """{(column title, check): (status, kind)} of each combination's latest run."""
    cells = {}
    for runs in latest_per_combination(junit).values():
        latest = runs[-1]
        for case in latest.cases:
            cells[(latest.combination, case.name)] = (case.outcome, case.kind)
    return cells


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A merged lab report of every stored run, with their history: what a lab's nightly job leaves."""
    root = tmp_path_factory.mktemp("reports")
    for run in RUNS:
        shutil.copytree(run.parent, root / run.parent.name)
    inputs = [root / run.parent.name / "junit.xml" for run in RUNS]
    merged = root / "lab" / "junit.xml"
    assert merge_junit(inputs, merged).exit_code == 0
    db = root / "history.sqlite"
    for path in inputs:
        record_run(db, path)
    page = render_html(merged, history=db)
    return {"root": root, "junit": merged, "page": page, "db": db, "reader": read_page(page.read_text())}


def test_the_stored_runs_are_real_runs_of_every_kind():
    assert {p.parent.name for p in RUNS} == {"virt-1", "virt-2", "virt-host", "virt-nvhe", "el1", "wrong",
                                             "finding", "strict"}
    kinds = Counter(case.kind for path in RUNS for suite in load_suites(path) for case in suite.cases)
    assert {record.PASS, record.FAIL, record.FINDING, record.WAIVED, record.ARTIFACT, record.SKIP} <= set(kinds)
    assert all(suite.identity and suite.prop("kernel_release") for p in RUNS for suite in load_suites(p))


def test_one_column_per_combination_not_per_run(lab):
    reader = lab["reader"]
    combinations = latest_per_combination(lab["junit"])
    assert len(RUNS) == 8 and len(combinations) == 6
    assert [key for key, _ in reader.columns] == list(combinations)
    assert "qemu-virt.protected.max" in combinations and "qemu-virt.protected.max.qemu-host" in combinations
    assert "2 runs, latest virt-2" in reader.headers[combinations["qemu-virt.protected.max"][-1].combination]


def test_each_cell_is_the_latest_outcome_of_its_check(lab):
    reader = lab["reader"]
    expected = expected_cells(lab["junit"])
    assert {key: (reader.cells[key], reader.kinds[key]) for key in expected} == expected
    assert {key for key, kind in reader.kinds.items() if kind == "missing"} == set(reader.kinds) - set(expected)
    wrong = next(s for s in load_suites(lab["junit"]) if s.prop("board") == "qemu-virt-wrong").combination
    assert reader.kinds[(wrong, "test_boot_el")] == record.FAIL
    assert reader.cell_text[(wrong, "test_boot_el")].strip().startswith("FAIL")
    assert "expected every CPU to start at EL1, the kernel says EL2" in reader.cell_text[(wrong, "test_boot_el")]


def test_history_per_check_and_a_finding_that_changed_is_flaky(lab):
    reader = lab["reader"]
    for runs in latest_per_combination(lab["junit"]).values():
        title = runs[-1].combination
        for case in runs[-1].cases:
            kinds = [next(c.kind for c in run.cases if c.name == case.name) for run in runs]
            if len(runs) == 1:
                assert (title, case.name) not in reader.history     # one run: no strip
                continue
            assert reader.history[(title, case.name)] == kinds, (title, case.name)
            verdicts = [k for k in kinds if k != record.SKIP]
            flips = sum(a != b for a, b in zip(verdicts, verdicts[1:], strict=False))
            assert reader.flips.get((title, case.name), 0) == flips
    # The findings board ran without, then with strict mode: what was waived (or passed: QEMU 7.2 leaks
    # on 2 boots of 3) now fails as a finding, and the page calls the check flaky.
    findings = latest_per_combination(lab["junit"])["qemu-virt-findings.protected.max.qemu-host"]
    strict = [(findings[-1].combination, c.name) for c in findings[-1].cases if c.kind == record.FINDING]
    assert strict
    for key in strict:
        assert reader.history[key][0] in (record.PASS, record.WAIVED) and reader.history[key][1] == record.FINDING
        assert reader.flips[key] == 1 and "flaky: 1 flip in 2 runs" in reader.cell_text[key]


def test_findings_and_waivers_are_called_out(lab):
    reader = lab["reader"]
    expected = sorted((title, check, kind) for (title, check), (_, kind) in expected_cells(lab["junit"]).items()
                      if record.KINDS[kind].finding)
    assert sorted(reader.findings) == expected
    assert {kind for _, _, kind in expected} == {record.ARTIFACT, record.FINDING}
    host = latest_per_combination(lab["junit"])["qemu-virt.protected.max.qemu-host"][-1].combination
    # The emulator alone changed the outcome: the artifact cell names both emulators.
    text = reader.cell_text[(host, "test_teardown_min[protected]")]
    assert re.search(r"emulator artifact: test_teardown_min\[protected\]: pass on qemu-1\d\.\d+\.\d+, "
                     r"artifact on qemu-7\.\d+\.\d+", text), text
    assert "EMULATOR ARTIFACT (waived)" in reader.note_of((host, "test_teardown_min[protected]"))


def test_a_kernel_upgrade_keeps_the_column_and_shows_the_change(tmp_path):
    """Two real runs of one combination, the second one's kernel release edited to a newer one: the
    QEMU board boots what Debian ships today, so an upgrade within a series is simulated on a copy."""
    old, new = tmp_path / "virt-1", tmp_path / "virt-2"
    shutil.copytree(RUNS_DIR / "virt-1", old)
    shutil.copytree(RUNS_DIR / "virt-2", new)
    (suite,) = load_suites(new / "junit.xml")
    release = suite.prop("kernel_release")
    text = (new / "junit.xml").read_text()
    assert text.count(f'name="pkvmlab.kernel_release" value="{release}"') == 1
    (new / "junit.xml").write_text(text.replace(f'name="pkvmlab.kernel_release" value="{release}"',
                                                'name="pkvmlab.kernel_release" value="7.9.1+deb13-arm64"'))
    merged = tmp_path / "lab.xml"
    assert merge_junit([old / "junit.xml", new / "junit.xml"], merged).exit_code == 0
    reader = read_page(render_html(merged).read_text())
    assert reader.columns == [("qemu-virt.protected.max", suite.combination.replace(release, "7.9.1+deb13-arm64"))]
    (title,) = reader.headers
    assert f"{release} → 7.9.1+deb13-arm64" in reader.headers[title] and "kernel changed" in reader.headers[title]
    assert reader.kernel_marks[(title, "test_boot_el")] == 1 and reader.history[(title, "test_boot_el")] == ["pass"] * 2


def test_skip_reasons_measured_values_and_facts_are_on_the_page(lab):
    reader = lab["reader"]
    el1 = next(s for s in load_suites(lab["junit"]) if s.prop("board") == "qemu-virt-el1")
    assert "no /dev/kvm: host booted at EL1" in reader.note_of((el1.combination, "test_create[protected]"))
    virt = latest_per_combination(lab["junit"])["qemu-virt.protected.max"][-1]
    assert "fault: SIGSEGV" in reader.cell_text[(virt.combination, "test_host_read[protected]")]
    text = lab["page"].read_text()
    for fact in (virt.prop("kvm_mode"), virt.prop("boot_seconds"), virt.prop("kernel_package"),
                 el1.prop("kvm_line")):
        assert fact and fact in text, fact


def test_page_is_self_contained(lab):
    text = lab["page"].read_text()
    reader = lab["reader"]
    assert reader.assets == []
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "url(" not in text and "@import" not in text
    anchors = set(reader.ids)
    for href in reader.links:
        assert not href.startswith(("/", "file:", "http")), href
        if href.startswith("#"):
            assert href[1:] in anchors, href     # a note or a failure on the same page
            continue
        assert (lab["page"].parent / href).is_file(), href
    # One console log per combination (its latest run's), plus one per failing check (its full log).
    failing = sum(status in ("failed", "error") for status, _ in expected_cells(lab["junit"]).values())
    assert failing >= 2 and sum(href.endswith("console.log") for href in reader.links) == 6 + failing


def test_trends_and_flaky_tests_from_history(lab):
    reader = lab["reader"]
    boards = {s.prop("board") for path in RUNS for s in load_suites(path)}
    assert reader.svgs == 2 * len(boards)      # boot seconds and pass rate, per board
    findings = latest_per_combination(lab["junit"])["qemu-virt-findings.protected.max.qemu-host"]
    assert ("qemu-virt-findings/" + findings[-1].combination.split("/", 1)[1],
            "suites.pvm.test_isolation::test_teardown_min[protected]") in reader.flaky


def test_one_run_page_beside_its_junit(tmp_path):
    run = tmp_path / "virt-1"
    shutil.copytree(RUNS_DIR / "virt-1", run)
    page = render_html(run / "junit.xml")
    assert page == run / "report.html"
    reader = read_page(page.read_text())
    assert {k: v for k, v in reader.cells.items()} == {k: s for k, (s, _) in expected_cells(run / "junit.xml").items()}
    assert "console.log" in reader.links and reader.svgs == 0 and len(reader.columns) == 1
    assert reader.findings == [] and "none: no check is a finding" in page.read_text()


def test_a_single_runs_page_has_its_history_from_the_database(tmp_path):
    """``pkvmlab run`` records the run, then writes its page: the page shows the earlier runs too."""
    db = tmp_path / "history.sqlite"
    for name in ("virt-1", "virt-2"):
        shutil.copytree(RUNS_DIR / name, tmp_path / name)
        record_run(db, tmp_path / name / "junit.xml")
    reader = read_page(render_html(tmp_path / "virt-2" / "junit.xml", history=db).read_text())
    (title,) = reader.headers
    assert reader.history[(title, "test_create[protected]")] == ["pass", "pass"]
    assert reader.svgs == 2


def test_templates_are_package_data():
    """Every template is matched by pyproject's package data, so an installed pkvmlab renders its pages."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["pkvmlab"]
    templates = sorted((ROOT / "pkvmlab" / "report" / "templates").iterdir())
    assert {t.name for t in templates} >= {"report.html.j2", "chart.svg.j2", "report.css", "matrix.md.j2"}
    for template in templates:
        relative = template.relative_to(ROOT / "pkvmlab").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_chromium_missing_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setenv("PKVMLAB_CHROMIUM", "no-such-chromium-binary")
    with pytest.raises(ChromiumMissing, match="chromium is not installed.*apt-get install -y chromium"):
        dump_dom(tmp_path / "x.html")


@pytest.mark.chromium
@needs_chromium
def test_chromium_renders_the_matrix(lab, record_testsuite_property):
    dom = dump_dom(lab["page"], timeout=90)
    reader = read_page(dom)
    expected = expected_cells(lab["junit"])
    assert {key: (reader.cells[key], reader.kinds[key]) for key in expected} == expected
    assert sorted(reader.findings) == sorted(lab["reader"].findings) and reader.svgs == lab["reader"].svgs
    png = screenshot(lab["page"], lab["page"].with_suffix(".png"), width=1400, height=2400, timeout=90)
    record_testsuite_property("test_chromium_renders_the_matrix.screenshot", png.name)
    width, height, pixels = read_png(png)
    assert (width, height) == (1400, 2400)
    counts = Counter(pixels)
    for name, colour in (("pass", PASS_RGB), ("fail", FAIL_RGB), ("waived", XFAIL_RGB), ("skip", SKIP_RGB)):
        painted = sum(n for px, n in counts.items() if all(abs(a - b) <= 3 for a, b in zip(px, colour, strict=True)))
        assert painted > 2000, f"no {name} cells painted in {png}"


@pytest.mark.chromium
@needs_chromium
def test_cli_html_with_screenshot(tmp_path, capsys):
    run = tmp_path / "virt-1"
    shutil.copytree(RUNS_DIR / "virt-1", run)
    parser = argparse.ArgumentParser(prog="pkvmlab")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "html", "--no-history", "--screenshot", "-o", str(tmp_path / "r.html"),
                              str(run / "junit.xml")])
    assert args.func(args) == 0
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert capsys.readouterr().out.split() == [str(tmp_path / "r.html"), str(tmp_path / "r.png")]
    args = parser.parse_args(["report", "html", str(tmp_path / "missing.xml")])
    assert args.func(args) == 2


def read_png(path):
    """(width, height, [(r, g, b)]) of an 8-bit RGB/RGBA non-interlaced PNG, as Chromium writes them."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride if kind else 0):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        pixels += [tuple(line[i:i + 3]) for i in range(0, stride, channels)]
        previous = line
    return width, height, pixels
