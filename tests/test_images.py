"""Image-set manifests and provisioning: checksums, bad input, and a warm cache that needs no network."""

import hashlib
import json

import pytest

from pkvmlab.errors import ConfigError, ImageError
from pkvmlab.images.cache import Cache
from pkvmlab.images.manifest import load_image_set
from pkvmlab.images.provision import provision


def sha(data):
    return hashlib.sha256(data).hexdigest()


def files_set(tmp_path, boot_sha):
    (tmp_path / "boot.img").write_bytes(b"ANDROID!" + b"\0" * 100)
    path = tmp_path / "set.yaml"
    path.write_text(f"name: s\nfiles:\n  boot:\n    path: boot.img\n    sha256: {boot_sha}\n")
    return path


def test_files_set_links_and_sums(tmp_path):
    data = b"ANDROID!" + b"\0" * 100
    result = provision(load_image_set(files_set(tmp_path, sha(data))), cache=Cache(tmp_path / "cache"))
    assert (result.directory / "boot").read_bytes() == data
    assert (result.directory / "SHA256SUMS").read_text() == f"{sha(data)}  boot\n"
    assert json.loads((result.directory / "manifest.json").read_text())["files"]["boot"]["sha256"] == sha(data)


def test_wrong_checksum_names_key_path_and_both_hashes(tmp_path):
    wrong = "f" * 64
    with pytest.raises(ImageError) as info:
        provision(load_image_set(files_set(tmp_path, wrong)), cache=Cache(tmp_path / "cache"))
    message = str(info.value)
    assert "files.boot" in message and "boot.img" in message and wrong in message
    assert sha(b"ANDROID!" + b"\0" * 100) in message
    assert not (tmp_path / "cache" / "sets").exists()


def test_missing_image_is_named(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text(f"name: s\nfiles:\n  dtbo:\n    path: nope.img\n    sha256: {'a' * 64}\n")
    with pytest.raises(ImageError, match=r"files.dtbo: .*nope.img not found"):
        provision(load_image_set(path), cache=Cache(tmp_path / "cache"))


def test_manifest_problems_all_reported(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text("name: s\nkernel:\n  file: Image\n  debian: {package: p, suite: s}\nextra: 1\n")
    with pytest.raises(ConfigError) as info:
        load_image_set(path)
    text = str(info.value)
    assert f"{path}:5: extra: unknown field" in text
    assert "kernel: give exactly one of 'debian' or 'file'" in text
    assert "kernel.sha256: a 64-hex-digit sha256 is required" in text
    assert "kernel.release: required" in text


def test_local_kernel_checksum_checked(tmp_path):
    (tmp_path / "Image").write_bytes(b"kernel")
    path = tmp_path / "set.yaml"
    path.write_text(f"name: s\nkernel:\n  file: Image\n  sha256: {'b' * 64}\n  release: \"9.9\"\n")
    with pytest.raises(ImageError, match="sha256 is .* the manifest says bbbb"):
        provision(load_image_set(path), cache=Cache(tmp_path / "cache"))


def test_unknown_image_set_lists_known_ones():
    with pytest.raises(ConfigError, match=r"unknown image set 'nope'. Available: .*qemu-arm64"):
        load_image_set("nope")


def test_kernel_package_not_in_suite_names_both(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text("name: s\nkernel:\n  debian: {package: linux-image-nosuch-arm64, suite: trixie}\n")
    with pytest.raises(ImageError, match=r"package 'linux-image-nosuch-arm64' \(arm64\) not found in suite 'trixie'"):
        provision(load_image_set(path), cache=Cache(tmp_path / "cache"))


def test_suite_not_on_the_mirror_is_named(tmp_path):
    path = tmp_path / "set.yaml"
    path.write_text("name: s\nkernel:\n  debian: {package: linux-image-arm64, suite: nosuch}\n")
    with pytest.raises(ImageError, match=r"Debian suite 'nosuch' not found on \S+ \(the mirror has no Release file"):
        provision(load_image_set(path), cache=Cache(tmp_path / "cache"))


def test_warm_provisioning_needs_no_network(monkeypatch):
    """Cold (or already warm) once with the real mirror, then again with the mirror unreachable."""
    image_set = load_image_set("qemu-arm64")
    cold = provision(image_set)
    assert cold.kernel_release and (cold.directory / "kernel").stat().st_size > 10_000_000
    monkeypatch.setenv("PKVMLAB_DEBIAN_MIRROR", "http://127.0.0.1:9/nowhere")
    warm = provision(image_set)
    assert warm.directory == cold.directory
    assert warm.record["kernel"]["sha256"] == cold.record["kernel"]["sha256"]
