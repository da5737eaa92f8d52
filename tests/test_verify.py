"""What boots is what the record says: every file is hashed before boot, and lock files pin Debian versions.

Real files, a real cache: each test works on a private copy of the warm cache
(``~/.cache/pkvmlab``, warmed by bootstrap or by the first test here), so
corrupting a blob never touches the shared one and nothing is downloaded unless
the test is about the mirror (the pinned-but-gone version asks it, as
provisioning does).
"""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from pkvmlab.boards import load_board, project_root
from pkvmlab.cli import main as cli_main
from pkvmlab.errors import ConfigError, ImageError, InfrastructureError
from pkvmlab.images.cache import Cache, sha256_file
from pkvmlab.images.emulator import DEBIAN_PACKAGES, host_arch, resolve_emulator
from pkvmlab.images.lock import lock_path, read_lock, write_lock
from pkvmlab.images.manifest import load_image_set
from pkvmlab.images.provision import provision
from pkvmlab.runstate import RunState

UNREACHABLE = "http://127.0.0.1:9/nowhere"


@pytest.fixture(scope="module")
def warm():
    """The shared cache, provisioned (a no-op when warm), without any lock."""
    return provision(load_image_set("qemu-arm64"), lock=None)


@pytest.fixture
def cache(warm, tmp_path, monkeypatch):
    """A private copy of the warm cache's blobs and records (and apt lists), used as $PKVMLAB_CACHE."""
    src = Cache().root
    root = tmp_path / "cache"
    (root / "blobs" / "sha256").mkdir(parents=True)
    record = warm.record
    needed = {record["kernel"]["sha256"], record["kernel"]["deb_sha256"], record["initramfs"]["sha256"],
              record["initramfs"]["busybox"]["sha256"], record["initramfs"]["busybox"]["deb_sha256"],
              record["elprobe"]["sha256"]}
    for sha in needed:
        shutil.copy2(src / "blobs" / "sha256" / sha, root / "blobs" / "sha256" / sha)
    shutil.copytree(src / "records", root / "records")
    if (src / "apt").is_dir():
        shutil.copytree(src / "apt", root / "apt", symlinks=True)
    monkeypatch.setenv("PKVMLAB_CACHE", str(root))
    copy = Cache(root)
    copy.shared = Cache(src)
    return copy


@pytest.fixture
def image_set(tmp_path):
    """images/qemu-arm64.yaml copied with its sources, so its lock file lands in tmp_path."""
    src = project_root() / "images"
    dest = tmp_path / "images"
    dest.mkdir()
    shutil.copy2(src / "qemu-arm64.yaml", dest)
    shutil.copytree(src / "initramfs", dest / "initramfs")
    shutil.copytree(src / "elprobe", dest / "elprobe")
    return load_image_set(dest / "qemu-arm64.yaml")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The mirror unreachable; apt told not to retry (APT_CONFIG, apt.conf(5)) so a refused fetch fails at once."""
    conf = tmp_path / "apt.conf"
    conf.write_text('Acquire::Retries "0";\n')
    monkeypatch.setenv("APT_CONFIG", str(conf))
    monkeypatch.setenv("PKVMLAB_DEBIAN_MIRROR", UNREACHABLE)


def corrupt(path):
    """Flip one byte of a file, the way a bad disk or a stray write would (a new inode: never the shared blob)."""
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0x01
    mode = Path(path).stat().st_mode
    Path(path).unlink()
    Path(path).write_bytes(bytes(data))
    os.chmod(path, mode)


def test_corrupted_cached_kernel_is_made_again_before_boot(cache, image_set, warm, offline, tmp_path):
    # Offline: the kernel is extracted again from the cached .deb (itself checked against its sha256).
    expected = warm.record["kernel"]["sha256"]
    blob = cache.blob_path(expected)
    corrupt(blob)
    assert sha256_file(blob) != expected
    started = time.monotonic()
    result = provision(image_set, cache=cache)
    print(f"repair took {time.monotonic() - started:.2f} s")
    booted = result.directory / "kernel"
    assert os.path.realpath(booted) == str(blob.resolve())      # the copy's blob, not the shared cache's
    assert sha256_file(booted) == expected
    assert result.record["refetched"] == [expected]
    assert result.record["verified"]["kernel"]["sha256"] == sha256_file(booted)
    # What the run records (JUnit property) is the hash measured on that file.
    run = RunState(load_board("qemu-virt"), image_set, result, tmp_path, "t")
    assert run.static_properties()["pkvmlab.kernel_image_sha256"] == sha256_file(booted)
    # The next provisioning finds everything intact and re-makes nothing.
    again = provision(image_set, cache=cache)
    assert "refetched" not in again.record and again.directory == result.directory


def test_every_boot_file_is_hashed_and_the_cost_is_small(cache, image_set):
    result = provision(image_set, cache=cache)
    verified = result.record["verified"]
    assert set(verified) == {"kernel", "initramfs", "elprobe"}
    for key, facts in verified.items():
        assert facts["sha256"] == sha256_file(result.directory / key)
    total = sum(f["size"] for f in verified.values())
    print(f"hashed {total / 1e6:.1f} MB in {result.record['verify_seconds'] * 1000:.0f} ms")
    assert result.record["verify_seconds"] < 2.0


def test_corrupted_initramfs_input_is_rebuilt_from_good_parts(cache, image_set, warm, offline):
    """The initramfs and busybox (packed into it) both bad: each is made again once, offline."""
    initramfs = warm.record["initramfs"]["sha256"]
    busybox = warm.record["initramfs"]["busybox"]["sha256"]
    corrupt(cache.blob_path(initramfs))
    corrupt(cache.blob_path(busybox))
    result = provision(image_set, cache=cache)
    assert sorted(result.record["refetched"]) == sorted({initramfs, busybox})
    assert sha256_file(result.directory / "initramfs") == initramfs
    assert sha256_file(cache.blob_path(busybox)) == busybox


def test_kernel_that_cannot_be_fetched_again_fails_and_never_boots(cache, image_set, warm, offline):
    """Kernel blob and its .deb both bad, mirror unreachable: an error, and no set points at bad bytes."""
    expected = warm.record["kernel"]["sha256"]
    corrupt(cache.blob_path(expected))
    corrupt(cache.blob_path(warm.record["kernel"]["deb_sha256"]))
    with pytest.raises((ImageError, InfrastructureError)) as info:
        provision(image_set, cache=cache)
    assert "127.0.0.1:9" in str(info.value)
    assert not cache.blob_path(expected).exists()           # the bad kernel is gone: nothing can boot it


def files_set(tmp_path, data):
    (tmp_path / "boot.img").write_bytes(data)
    path = tmp_path / "set.yaml"
    path.write_text(f"name: s\nfiles:\n  boot:\n    path: boot.img\n    sha256: "
                    f"{__import__('hashlib').sha256(data).hexdigest()}\n")
    return load_image_set(path)


def test_corrupted_local_file_stops_naming_file_and_both_hashes(tmp_path):
    data = b"ANDROID!" + bytes(range(256)) * 64
    image_set = files_set(tmp_path, data)
    cache = Cache(tmp_path / "cache")
    good = provision(image_set, cache=cache)
    expected = good.record["verified"]["boot"]["sha256"]
    corrupt(tmp_path / "boot.img")
    actual = sha256_file(tmp_path / "boot.img")
    with pytest.raises(ImageError) as info:
        provision(image_set, cache=cache)
    message = str(info.value)
    assert "files.boot" in message and str(tmp_path / "boot.img") in message
    assert expected in message and actual in message


def kernel_file_set(tmp_path, data):
    (tmp_path / "Image").write_bytes(data)
    path = tmp_path / "kset.yaml"
    path.write_text(f"name: k\nkernel:\n  file: Image\n  sha256: {__import__('hashlib').sha256(data).hexdigest()}\n"
                    "  release: \"9.9\"\n")
    return load_image_set(path)


def test_local_kernel_blob_is_copied_again_or_stops_when_the_source_changed(tmp_path):
    data = b"\x00" * 64 + b"ARMd" + os.urandom(4096)
    image_set = kernel_file_set(tmp_path, data)
    cache = Cache(tmp_path / "cache")
    expected = provision(image_set, cache=cache).record["kernel"]["sha256"]
    corrupt(cache.blob_path(expected))
    repaired = provision(image_set, cache=cache)                # the source still matches: copied again
    assert repaired.record["refetched"] == [expected]
    assert sha256_file(repaired.directory / "kernel") == expected
    corrupt(cache.blob_path(expected))
    corrupt(tmp_path / "Image")
    with pytest.raises(ImageError) as info:
        provision(image_set, cache=cache)
    message = str(info.value)
    assert f"kernel.file {tmp_path / 'Image'}" in message
    assert expected in message and sha256_file(tmp_path / "Image") in message


def test_lock_is_written_and_pins_what_boots(cache, image_set, warm, monkeypatch, capsys):
    assert cli_main(["images", "lock", "--set", str(image_set.path)]) == 0
    lock = read_lock(lock_path(image_set))
    assert lock.path == image_set.path.parent / "qemu-arm64.lock.json"
    pin = lock.data["kernel"]["linux-image-arm64/trixie-backports"]
    kernel = warm.record["kernel"]
    assert (pin["package"], pin["version"], pin["deb_sha256"], pin["sha256"]) == \
        (kernel["package"], kernel["version"], kernel["deb_sha256"], kernel["sha256"])
    assert lock.data["busybox"]["busybox-static/trixie"]["version"] == warm.record["initramfs"]["busybox"]["version"]
    assert "linux-image-arm64/trixie-backports" in capsys.readouterr().out

    # The cache now believes "newest in the suite" is another kernel (as after a mirror update).
    key = "kernel-debian-linux-image-arm64-trixie-backports"
    floating = dict(json.loads(cache.record_path(key).read_text()), version="99.0-1", deb_sha256="0" * 64,
                    sha256=warm.record["initramfs"]["sha256"], blobs={"kernel": warm.record["initramfs"]["sha256"]})
    cache.put_record(key, floating)
    assert provision(image_set, cache=cache, lock=None).record["kernel"]["version"] == "99.0-1"
    monkeypatch.setenv("PKVMLAB_DEBIAN_MIRROR", UNREACHABLE)    # the pinned .deb is cached: no mirror needed
    pinned = provision(image_set, cache=cache)                  # the lock file next to the manifest
    assert pinned.record["kernel"]["version"] == pin["version"]
    assert pinned.record["verified"]["kernel"]["sha256"] == pin["sha256"]
    assert pinned.record["lock"] == str(lock.path)


def test_lock_without_a_pin_for_the_suite_does_not_float(cache, image_set):
    assert cli_main(["images", "lock", "--set", str(image_set.path)]) == 0
    with pytest.raises(ImageError, match=r"qemu-arm64.lock.json: no kernel pinned for linux-image-arm64 in sid "
                                         r".*pkvmlab images lock --kernel-suite sid"):
        provision(image_set.with_kernel_suite("sid"), cache=cache)


def test_pinned_version_the_mirror_no_longer_has_fails_clearly(cache, image_set, warm):
    kernel = warm.record["kernel"]
    gone = dict(kernel, version="7.3.4-0~gone1", deb_sha256="1" * 64)
    write_lock(lock_path(image_set), {"kernel": {"linux-image-arm64/trixie-backports":
                                                 {k: gone[k] for k in ("package", "version", "deb_sha256",
                                                                       "member", "sha256", "suite")}}})
    before = cache.record_path("kernel-debian-linux-image-arm64-trixie-backports").read_text()
    with pytest.raises(ImageError) as info:
        provision(image_set, cache=cache)
    message = str(info.value)
    assert message.startswith(f"{lock_path(image_set)}: kernel {kernel['package']} 7.3.4-0~gone1 is pinned but "
                              "trixie-backports on ")
    assert message.endswith("no longer has it; run `pkvmlab images lock --update`")
    # Never a silent upgrade: the cached resolution is untouched.
    assert cache.record_path("kernel-debian-linux-image-arm64-trixie-backports").read_text() == before


def test_malformed_lock_names_file_and_field(image_set):
    lock_path(image_set).write_text(json.dumps({"lock_version": 1, "kernel": {"x/y": {"package": "p",
                                                                                      "deb_sha256": "nothex"}}}))
    with pytest.raises(ConfigError) as info:
        provision(image_set)
    text = str(info.value)
    assert f"{lock_path(image_set)}: kernel.x/y.version: missing" in text
    assert "kernel.x/y.deb_sha256: not a 64-hex-digit sha256" in text


def test_emulator_lock_pins_the_debian_emulator(cache, tmp_path, offline):
    arch = host_arch()
    src = cache.shared.record_path(f"emulator-debian-{DEBIAN_PACKAGES[0]}-bookworm-backports-{arch}")
    if not src.is_file():
        pytest.skip("no Debian emulator in the warm cache (the host's QEMU is new enough)")
    record = json.loads(src.read_text())
    for sha in record["blobs"].values():          # the .debs are in the copy: nothing is downloaded
        shutil.copy2(cache.shared.blob_path(sha), cache.blob_path(sha))
    path = tmp_path / "emulator.lock.json"
    key = f"{DEBIAN_PACKAGES[0]}/bookworm-backports/{arch}"
    write_lock(path, {"emulator": {key: {"version": record["version"], "packages": record["packages"]}}})
    emulator = resolve_emulator("bookworm-backports", cache=cache, lock=path)
    assert emulator.fetched["version"] == record["version"]
    assert emulator.package == f"{DEBIAN_PACKAGES[0]} {record['version']}"
    # A pin for another .deb than the cache holds is not satisfied by the cache: it goes to the mirror.
    other = dict(record["packages"], **{DEBIAN_PACKAGES[2]: dict(record["packages"][DEBIAN_PACKAGES[2]],
                                                                  deb_sha256="2" * 64)})
    write_lock(path, {"emulator": {key: {"version": record["version"], "packages": other}}})
    with pytest.raises(InfrastructureError, match="127.0.0.1:9"):
        resolve_emulator("bookworm-backports", cache=cache, lock=path)
    with pytest.raises(ImageError, match=rf"{path}: no emulator pinned for {DEBIAN_PACKAGES[0]}/trixie/{arch}"):
        resolve_emulator("trixie", cache=cache, lock=path)


def test_lock_update_re_resolves_a_stale_pin_to_the_newest(cache, image_set, warm):
    """--update asks the mirror (as provisioning does) and replaces a pin it no longer lists."""
    kernel = warm.record["kernel"]
    stale = {k: kernel[k] for k in ("package", "version", "deb_sha256", "member", "sha256", "suite")}
    write_lock(lock_path(image_set), {"kernel": {"linux-image-arm64/trixie-backports":
                                                 dict(stale, version="7.3.4-0~gone1", deb_sha256="1" * 64)}})
    assert cli_main(["images", "lock", "--update", "--set", str(image_set.path)]) == 0
    pin = read_lock(lock_path(image_set)).data["kernel"]["linux-image-arm64/trixie-backports"]
    assert pin["version"] != "7.3.4-0~gone1" and pin["deb_sha256"] != "1" * 64
    assert pin["filename"].startswith("pool/main/l/")           # freshly resolved: the pool file is named
    assert cache.verify_blob(pin["deb_sha256"]) and cache.verify_blob(pin["sha256"])
    assert provision(image_set, cache=cache).record["kernel"]["version"] == pin["version"]


def test_lock_for_a_board_pins_its_emulator_too(cache, tmp_path, monkeypatch, offline, capsys):
    """`images lock --board qemu-virt`: the set's lock and, when the QEMU is Debian's, images/emulator.lock.json."""
    import pkvmlab.images.emulator as emulator_module
    import pkvmlab.images.lock as lock_module
    set_lock, emulator_lock = tmp_path / "set.lock.json", tmp_path / "emulator.lock.json"
    monkeypatch.setattr(lock_module, "lock_path", lambda image_set: set_lock)
    monkeypatch.setattr(lock_module, "emulator_lock_path", lambda root=None: emulator_lock)
    monkeypatch.setattr(emulator_module, "emulator_lock_path", lambda root=None: emulator_lock)
    record_file = cache.shared.record_path(f"emulator-debian-{DEBIAN_PACKAGES[0]}-bookworm-backports-{host_arch()}")
    if record_file.is_file():
        for sha in json.loads(record_file.read_text())["blobs"].values():
            shutil.copy2(cache.shared.blob_path(sha), cache.blob_path(sha))
    assert cli_main(["images", "lock", "--board", "qemu-virt"]) == 0
    assert read_lock(set_lock).data["kernel"]["linux-image-arm64/trixie-backports"]["version"]
    emulator = resolve_emulator("auto", load_board("qemu-virt").emulator.qemu_min_version, cache=cache, lock=None)
    if emulator.fetched is None:        # the host's QEMU is new enough: nothing from Debian to pin
        assert not emulator_lock.exists() and "nothing to pin" in capsys.readouterr().out
        return
    pins = read_lock(emulator_lock).data["emulator"]
    key = f"{DEBIAN_PACKAGES[0]}/{emulator.fetched['suite']}/{host_arch()}"
    assert pins[key]["version"] == emulator.fetched["version"]
    assert {name: p["deb_sha256"] for name, p in pins[key]["packages"].items()} == emulator.fetched["blobs"]
    # A run's default resolution goes through that lock: the cached emulator serves only its pin.
    assert resolve_emulator("auto", "10.0", cache=cache).fetched["version"] == pins[key]["version"]
    moved = {key: dict(pins[key], packages={n: dict(p, version="1:10.0.9-1", deb_sha256="3" * 64)
                                            for n, p in pins[key]["packages"].items()})}
    write_lock(emulator_lock, {"emulator": moved})
    with pytest.raises(InfrastructureError, match="127.0.0.1:9"):    # the pinned .debs must come from the mirror
        resolve_emulator("auto", "10.0", cache=cache)
