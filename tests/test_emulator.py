"""The emulator as evidence: which QEMU a board runs on, how it is chosen, and artifacts told apart."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pkvmlab.boards import EmulatorArtifact, load_board, load_board_file
from pkvmlab.errors import ConfigError
from pkvmlab.images.emulator import query_version, resolve_emulator, version_tuple
from pkvmlab.matrix import split_cpus
from pkvmlab.report.junit import Case, Suite
from pkvmlab.report.table import build_matrix, emulator_artifacts
from pkvmlab.runstate import with_cpu, with_kvm_mode


def test_auto_gives_a_qemu_at_least_the_boards_minimum():
    board = load_board("qemu-virt")
    emulator = resolve_emulator("auto", board.emulator.qemu_min_version)
    assert version_tuple(emulator.version) >= version_tuple(board.emulator.qemu_min_version)
    # The binary really is that version, and it runs here.
    assert query_version(emulator.binary)[0] == emulator.version
    out = subprocess.run([str(emulator.binary), "-M", "virt", "-cpu", "help"], capture_output=True, text=True)
    assert "cortex-a72" in out.stdout


@pytest.mark.skipif(not shutil.which("qemu-system-aarch64"), reason="no host qemu-system-aarch64 on PATH")
def test_host_is_the_qemu_on_path():
    emulator = resolve_emulator("host")
    assert emulator.source == "host" and emulator.binary.name == "qemu-system-aarch64"
    assert emulator.version_line.startswith("QEMU emulator version")


def test_a_path_that_is_no_qemu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such QEMU binary"):
        resolve_emulator(str(tmp_path / "qemu-nope"))


def test_the_cpu_model_decides_the_expected_kvm_mode():
    board = load_board("qemu-virt")
    assert board.expect.kvm_mode == "protected"
    a72 = with_cpu(board, "cortex-a72")
    assert a72.expect.kvm_mode == "protected-nvhe"        # no VHE: no hVHE
    assert with_kvm_mode(a72, "default").expect.kvm_mode == "nvhe"
    assert with_kvm_mode(board, "default").expect.kvm_mode == "vhe"
    with pytest.raises(ConfigError, match="unknown CPU model 'cortex-z9'. Available: max"):
        with_cpu(board, "cortex-z9")


def test_an_artifact_applies_only_where_it_was_measured():
    artifact = EmulatorArtifact(qemu_below="10.0", kvm_mode="protected-hvhe", reason="r", reference="README.md")
    assert artifact.applies("7.2.22", "protected-hvhe")
    assert not artifact.applies("7.2.22", "protected-nvhe")
    assert not artifact.applies("10.0.2", "protected-hvhe")
    assert not artifact.applies(None, "protected-hvhe")
    board = load_board("qemu-virt")
    assert board.expect.emulator_artifact("teardown_min", "protected", "7.2.22", "protected-hvhe") is not None
    assert board.expect.emulator_artifact("teardown_min", "protected", "10.0.2", "protected-hvhe") is None
    assert board.expect.known_finding("teardown", "protected") is None   # no longer the board's


def test_a_bad_artifact_entry_names_file_line_and_field(tmp_path):
    text = (tmp_path / "b.yaml")
    source = load_board("qemu-virt").path.read_text()
    text.write_text(source.replace("name: qemu-virt", "name: b").replace("env: envs/", "env: ../envs/")
                    .replace('      qemu_below: "10.0"\n', "").replace("teardown_min/protected:", "teardwn/protected:"))
    with pytest.raises(ConfigError) as err:
        load_board_file(text, root=load_board("qemu-virt").path.parent.parent)
    message = str(err.value)
    assert "expect.emulator_artifacts.teardown/protected.qemu_below: required field missing" in message
    assert "expect.emulator_artifacts.teardwn/protected: not a pvm check" in message


def test_split_cpus_keeps_properties_with_their_model():
    assert split_cpus("max,pauth-impdef=on,cortex-a72") == ["max,pauth-impdef=on", "cortex-a72"]
    assert split_cpus("") == []


def _suite(emulator, cpu, kinds, qemu=None):
    """A matrix cell's suite as ``junit.load_suites`` reads it: identity, emulator and each check's kind."""
    identity = "qemu-virt.protected." + cpu + (f".qemu-{qemu}" if qemu else "")
    props = [("pkvmlab.identity", identity), ("pkvmlab.board", "qemu-virt"), ("pkvmlab.kvm_arm_mode", "protected"),
             ("pkvmlab.kernel_release", "7.3.4+deb13-arm64"), ("pkvmlab.emulator", emulator), ("pkvmlab.cpu", cpu)]
    cases = [Case(f"{identity}.suites.pvm.test_isolation", name, 0.0, "", kind=kind) for name, kind in kinds.items()]
    return Suite(name=identity, source=Path("junit.xml"), property_list=props, cases=cases)


def test_the_matrix_calls_a_check_that_only_one_emulator_fails_an_emulator_artifact():
    kinds = {"test_teardown_min[protected]": "artifact", "test_boot_el": "pass"}
    suites = [_suite("qemu-7.2.22", "max", kinds, qemu="host"),
              _suite("qemu-10.0.2", "max", {"test_teardown_min[protected]": "pass", "test_boot_el": "pass"}),
              _suite("qemu-7.2.22", "cortex-a72", {"test_teardown_min[protected]": "fail"}, qemu="host")]
    matrix = build_matrix(suites)
    key = "suites.pvm.test_isolation::test_teardown_min[protected]"
    assert emulator_artifacts(matrix) == {(key, 0): ["emulator artifact: test_teardown_min[protected]: pass on "
                                                     "qemu-10.0.2, artifact on qemu-7.2.22"]}
    assert matrix.rows[0].cells[0].notes and not matrix.rows[0].cells[2].notes   # other CPU: not compared
    # A check that fails on every emulator is not the emulator's.
    suites[1].cases[0] = Case(suites[1].cases[0].classname, "test_teardown_min[protected]", 0.0, "", kind="fail")
    assert emulator_artifacts(build_matrix(suites)) == {}
