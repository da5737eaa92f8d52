"""The HTML report: self-contained, the matrix says what the JUnit says, and Chromium renders it so."""

import argparse
import re
import shutil
import struct
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pkvmlab.report import cli
from pkvmlab.report.chromium import INSTALL_HINT, ChromiumMissing, dump_dom, find_chromium, screenshot
from pkvmlab.report.history import record_run
from pkvmlab.report.html import render_html
from pkvmlab.report.junit import load_suites
from pkvmlab.report.merge import merge_junit

FIXTURES = Path(__file__).parent / "fixtures" / "junit"
RUNS = sorted(FIXTURES.glob("2*/junit.xml"))
BOOKWORM = FIXTURES / "20261120-080400-qemu-virt-bookworm-protected"

needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason=f"chromium is not installed; install it with: {INSTALL_HINT}")

# The cell backgrounds in html.CSS, as a browser paints them.
PASS_RGB, FAIL_RGB, ERROR_RGB = (0xC9, 0xEF, 0xC4), (0xF5, 0xB8, 0xB8), (0xF7, 0xD0, 0x8A)


class PageReader(HTMLParser):
    """What a reader of the page can find: matrix cells, flaky rows, links, and anything that loads assets."""

    def __init__(self):
        super().__init__()
        self.cells = {}
        self.cell_text = {}
        self.flaky = []
        self.links = []
        self.ids = []
        self.assets = []
        self.svgs = 0
        self._cell = None
        self._note = None
        self.notes = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-outcome" in attrs:
            self._cell = (attrs["data-suite"], attrs["data-check"])
            self.cells[self._cell] = attrs["data-outcome"]
            self.cell_text[self._cell] = ""
        if tag == "li" and "data-note" in attrs:
            self._note = attrs["data-note"]
            self.notes[self._note] = ""
        if tag == "tr" and "data-test" in attrs:
            self.flaky.append(attrs["data-test"])
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

    def handle_data(self, data):
        if self._cell:
            self.cell_text[self._cell] += data
        if self._note:
            self.notes[self._note] += data

    def note_of(self, cell):
        """The text of the note a skipped or known-finding cell points to (the number after its label)."""
        number = re.match(r"(?:skip|known)(\d+)", self.cell_text[cell]).group(1)
        return self.notes[number]


def read_page(text):
    reader = PageReader()
    reader.feed(text)
    return reader


def expected_cells(junit):
    return {(suite.name, case.name): case.outcome for suite in load_suites(junit) for case in suite.cases}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A merged lab report of every fixture run, with their history: what `pkvmlab matrix` leaves behind."""
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
    return {"root": root, "junit": merged, "page": page, "db": db}


def test_page_is_self_contained(lab):
    text = lab["page"].read_text()
    reader = read_page(text)
    assert reader.assets == []
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert "url(" not in text and "@import" not in text
    anchors = set(reader.ids)
    for href in reader.links:
        assert not href.startswith(("/", "file:")), href
        if href.startswith("#"):
            assert href[1:] in anchors, href     # a note or a failure on the same page
            continue
        assert (lab["page"].parent / href).is_file(), href
    # One per run in the logs row, plus one per failure (its full log).
    assert {href for href in reader.links if href.endswith("console.log")} == {
        href for href in reader.links if href.endswith("console.log")}
    assert sum(href.endswith("console.log") for href in reader.links) >= len(RUNS)


def test_matrix_says_what_the_junit_says(lab):
    reader = read_page(lab["page"].read_text())
    assert reader.cells == expected_cells(lab["junit"])
    assert reader.cells[("qemu-virt/6.1.0-41-arm64/protected", "test_pvm_create")] == "failed"
    text = reader.cell_text[("qemu-virt/6.1.0-41-arm64/protected", "test_pvm_create")]
    assert text.startswith("FAIL") and "result=EINVAL" in text


def test_skip_reasons_measured_values_and_facts_are_on_the_page(lab):
    reader = read_page(lab["page"].read_text())
    el1 = "qemu-virt-el1/7.3.4+deb13-arm64/protected"
    # A skip's reason is a numbered note under the matrix; the cell points to it.
    assert "no /dev/kvm: the kernel booted at EL1" in reader.note_of((el1, "test_pvm_create"))
    assert "signal=SIGSEGV" in reader.cell_text[("qemu-virt/7.3.4+deb13-arm64/protected", "test_host_read_protected")]
    text = lab["page"].read_text()
    for fact in ("protected-hvhe", "protected-nvhe", "2.903", "linux-image-6.1.0-41-arm64 6.1.170-1",
                 "elprobe: KVM_CREATE_VM(type=0x80000000): Invalid argument"):
        assert fact in text


def test_trends_and_flaky_tests_from_history(lab):
    reader = read_page(lab["page"].read_text())
    assert reader.svgs == 4      # boot seconds and pass rate, for each of the two boards
    assert sorted(reader.flaky) == ["suites.boot.test_boot::test_no_kernel_problems",
                                    "suites.pvm.test_pvm::test_guest_current_el"]


def test_one_run_page_beside_its_junit(tmp_path):
    run = tmp_path / BOOKWORM.name
    shutil.copytree(BOOKWORM, run)
    page = render_html(run / "junit.xml")
    assert page == run / "report.html"
    reader = read_page(page.read_text())
    assert reader.cells == expected_cells(run / "junit.xml")
    assert "console.log" in reader.links and reader.svgs == 0


def test_chromium_missing_is_said_plainly(monkeypatch, tmp_path):
    monkeypatch.setenv("PKVMLAB_CHROMIUM", "no-such-chromium-binary")
    with pytest.raises(ChromiumMissing, match="chromium is not installed.*apt-get install -y chromium"):
        dump_dom(tmp_path / "x.html")


@pytest.mark.chromium
@needs_chromium
def test_chromium_renders_the_matrix(lab, record_testsuite_property):
    dom = dump_dom(lab["page"], timeout=90)
    reader = read_page(dom)
    assert reader.cells == expected_cells(lab["junit"])
    assert len(reader.flaky) == 2 and reader.svgs == 4
    png = screenshot(lab["page"], lab["page"].with_suffix(".png"), width=1400, height=1800, timeout=90)
    record_testsuite_property("test_chromium_renders_the_matrix.screenshot", str(png))
    width, height, pixels = read_png(png)
    assert (width, height) == (1400, 1800)
    counts = Counter(pixels)
    for name, colour in (("pass", PASS_RGB), ("fail", FAIL_RGB), ("error", ERROR_RGB)):
        painted = sum(n for px, n in counts.items() if all(abs(a - b) <= 3 for a, b in zip(px, colour, strict=True)))
        assert painted > 2000, f"no {name} cells painted in {png}"


@pytest.mark.chromium
@needs_chromium
def test_cli_html_with_screenshot(tmp_path, capsys):
    run = tmp_path / BOOKWORM.name
    shutil.copytree(BOOKWORM, run)
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
