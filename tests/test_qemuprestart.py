"""QEMU started early from a remembered command line (pkvmlab/qemuprestart.py): used only when it is the same.

The unit tests start real processes (a Python that sleeps, standing in for a paused QEMU: the
module starts whatever command it remembered) and check the guarantee that matters: a guess
that is not word for word the driver's command, or whose files changed, is never used and
leaves no process or temp dir behind.  The last test runs the real board twice.
"""

import json
import os
import sys
import time

import pytest
from boardrun import ROOT, parse_junit, run_board

from pkvmlab import qemuprestart


@pytest.fixture()
def prestart(tmp_path, monkeypatch):
    """The module with a fresh state and its records under a temp cache; stops what a test left."""
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(qemuprestart, "_state", {"key": None, "early": None})
    yield qemuprestart
    qemuprestart.discard()


def driver_command(tmp_path, tempdir, image, word="paused"):
    """What PkvmQEMUDriver would build: a binary, files, and the console socket in its own temp dir."""
    return [sys.executable, "-c", "import time; time.sleep(60)", f"{image}", f"socket,path={tempdir}/serialrw",
            word]


def remembered(prestart, tmp_path, image):
    """A first run: nothing started early; the driver's command is remembered."""
    first_dir = tmp_path / "first"
    first_dir.mkdir()
    assert prestart.start("k") is None
    assert prestart.adopt(driver_command(tmp_path, first_dir, image), str(first_dir)) is None
    return json.loads((tmp_path / "cache" / "qemu-commands" / "k.json").read_text())


def alive(process):
    return process.poll() is None


def test_the_same_command_is_started_early_and_adopted(prestart, tmp_path):
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    record = remembered(prestart, tmp_path, image)
    assert prestart.TEMPDIR in record["command"][4] and str(image) in record["files"]
    assert sys.executable in record["files"]          # the binary is a file QEMU is, too

    early = prestart.start("k")
    assert early is not None and alive(early.child)
    assert os.path.exists(f"{early.tempdir}/serialrw") and early.command[4] == f"socket,path={early.tempdir}/serialrw"
    own_dir = tmp_path / "driver"
    own_dir.mkdir()
    assert prestart.adopt(driver_command(tmp_path, own_dir, image), str(own_dir)) is early
    prestart.discard()                                # taken: no longer the module's to stop
    assert alive(early.child)
    early.stop()
    assert not os.path.exists(early.tempdir)


def test_a_different_command_is_stopped_and_the_new_one_remembered(prestart, tmp_path):
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    remembered(prestart, tmp_path, image)
    early = prestart.start("k")
    assert alive(early.child)
    own_dir = tmp_path / "driver"
    own_dir.mkdir()
    changed = driver_command(tmp_path, own_dir, image, word="kvm-arm.mode=nvhe")
    assert prestart.adopt(changed, str(own_dir)) is None
    assert not alive(early.child) and not os.path.exists(early.tempdir)
    record = json.loads((tmp_path / "cache" / "qemu-commands" / "k.json").read_text())
    assert record["command"][-1] == "kvm-arm.mode=nvhe"


def test_a_changed_file_is_not_guessed_at(prestart, tmp_path):
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    remembered(prestart, tmp_path, image)
    time.sleep(0.01)
    image.write_bytes(b"kernel, provisioned again")
    assert prestart.start("k") is None


def test_a_file_changed_after_the_early_start_is_not_adopted(prestart, tmp_path):
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    remembered(prestart, tmp_path, image)
    early = prestart.start("k")
    os.utime(image, ns=(0, 0))        # the same bytes, but not provably the file QEMU opened
    own_dir = tmp_path / "driver"
    own_dir.mkdir()
    assert prestart.adopt(driver_command(tmp_path, own_dir, image), str(own_dir)) is None
    assert not alive(early.child)


def test_an_early_qemu_no_driver_took_is_stopped(prestart, tmp_path):
    image = tmp_path / "kernel"
    image.write_bytes(b"kernel")
    remembered(prestart, tmp_path, image)
    early = prestart.start("k")
    prestart.discard()
    assert not alive(early.child) and not os.path.exists(early.tempdir)


@pytest.mark.parametrize("text", ["{not json", '{"command": 5, "files": {}}', '{"command": ["true"], "files": [1]}',
                                  '{"command": ["true"], "files": {"/x": 1}}', '{"command": []}'])
def test_an_unreadable_record_is_no_guess(prestart, tmp_path, text):
    path = tmp_path / "cache" / "qemu-commands" / "k.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert prestart.start("k") is None


def test_second_run_boots_the_qemu_started_early_and_it_is_the_same_board(tmp_path):
    # --cpu given as the board's own: the same command line as a plain run, under a key of its own
    args = (str(ROOT / "suites" / "boot"), "--cpu", "max,pauth-impdef=on")
    for run_id in ("first", "second"):
        proc, run_dir = run_board(tmp_path, "qemu-virt", *args, run_id=run_id)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    suite, props, _ = parse_junit(run_dir / "junit.xml")
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0")
    assert "protected" in props["pkvmlab.kvm_mode"]
    marks = [m["name"] for m in json.loads((run_dir / "timeline.json").read_text())["marks"]]
    assert marks[1:3] == ["cli", "qemu_prestart"], marks
    assert "started early from this same command line" in (run_dir / "harness.log").read_text()
