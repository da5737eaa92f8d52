"""The emulator a QEMU board runs on: chosen, fetched, and recorded like any image.

Why the emulator is provisioned and not just found on PATH: the emulator is
part of the evidence.  Debian 12's QEMU 7.2 lets a protected guest's data
survive the VM's teardown under protected hVHE, where QEMU 10.0 and real pKVM
wipe it (measured; the README's "Known emulator artifacts"), so a run must say
which emulator it used, and a board must be able to ask for a faithful one.

Sources (``--qemu`` or the board's default):

* ``auto`` (default): the host's ``qemu-system-aarch64`` when it is at least
  the board's ``emulator.qemu_min_version``, else QEMU from the host's own
  Debian backports suite (``bookworm-backports`` on Debian 12) fetched into the
  cache; Debian 13's own QEMU is 10.0 already.
* ``host``: whatever ``qemu-system-aarch64`` is on PATH.
* a Debian suite (``bookworm``, ``bookworm-backports``, ``trixie``...):
  Debian's ``qemu-system-arm`` of that suite for the host's architecture,
  downloaded (signature-checked package lists, sha256-checked .debs), unpacked
  with ``dpkg-deb -x`` into the cache and run from there: no root, nothing
  installed.  The host needs the shared libraries it links (Debian's own
  ``qemu-system-arm`` package brings them; ``bootstrap`` installs it).
* a path to a QEMU binary.
"""

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..boards import version_tuple
from ..errors import ConfigError, ImageError, InfrastructureError
from .debian import DebianArchive
from .lock import UPDATE_HINT, emulator_lock_path, read_lock
from .progress import note

USE_LOCK_FILE = object()   # resolve_emulator(lock=...): images/emulator.lock.json when it exists

BINARY = "qemu-system-aarch64"
# Debian's QEMU for arm64 guests is split in three: the binary, the helpers and ROMs it shares
# with the other targets, and the data files (https://packages.debian.org/bookworm-backports/qemu-system-arm).
DEBIAN_PACKAGES = ("qemu-system-arm", "qemu-system-common", "qemu-system-data")
_VERSION_LINE = re.compile(r"QEMU emulator version (\d+(?:\.\d+)+)[^\n]*")


@dataclass(frozen=True)
class Emulator:
    binary: Path
    version: str         # "10.0.2"
    version_line: str    # "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
    source: str          # "host", "debian:<suite>" or "file"
    package: str = ""    # "qemu-system-arm 1:10.0.2+ds-2+deb13u1~bpo12+1", when known
    fetched: dict = field(default=None, compare=False)   # the cache record of a Debian emulator (for locking)

    @property
    def label(self):
        """Short name for tables and suite names: ``qemu-10.0.2``."""
        return f"qemu-{self.version}"

    def record(self):
        return {"binary": str(self.binary), "version": self.version, "version_line": self.version_line,
                "source": self.source, "package": self.package}


def _file_identity(path):
    """What changes when ``path`` is replaced or rewritten: device, inode, size, modification time."""
    st = Path(path).resolve().stat()
    return [str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _remembered(kind, files, compute):
    """``compute()``, remembered in the cache under the identity of ``files`` (paths).

    Asking a QEMU binary for its version and dpkg for its package costs 25-70 ms
    of subprocesses per run, before the boot can start; the answer only changes
    when one of the files does (a new binary, a dpkg database written by an
    install), so a warm run reads it back instead.  A file that cannot be stat'ed
    is asked every time.
    """
    from .cache import Cache, sha256_bytes
    try:
        identity = [_file_identity(f) for f in files]
    except OSError:
        return compute()
    cache = Cache()
    # One record per kind and files (overwritten when they change), so the cache does not grow with them.
    key = f"probe-{kind}-{sha256_bytes(repr([i[0] for i in identity]).encode())[:24]}"
    record = cache.read_record(key)
    if record is not None and record.get("identity") == identity:
        return record["value"]
    value = compute()
    try:
        cache.put_record(key, {"identity": identity, "value": value})
    except OSError:
        pass    # a read-only cache: asked again next time
    return value


def query_version(binary):
    """(version, version line) of a QEMU binary; InfrastructureError with its own words if it cannot run."""
    return tuple(_remembered("qemu-version", [binary], lambda: _ask_version(binary)))


def _ask_version(binary):
    try:
        proc = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        raise InfrastructureError(f"QEMU binary {binary} cannot run: {err}") from None
    except subprocess.TimeoutExpired:
        raise InfrastructureError(f"QEMU binary {binary} did not answer --version within 30 s") from None
    match = _VERSION_LINE.search(proc.stdout)
    if proc.returncode != 0 or not match:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise InfrastructureError(f"QEMU binary {binary} cannot run: {said[0] if said else f'exit {proc.returncode}'}"
                                  " (a fetched QEMU needs the host's shared libraries: "
                                  "sudo apt-get install -y qemu-system-arm libaio1)")
    return match.group(1), match.group(0).strip()


DPKG_STATUS = "/var/lib/dpkg/status"      # rewritten by every install or removal


def host_package(binary):
    """'package version' owning ``binary`` according to dpkg, or ''."""
    if not Path(DPKG_STATUS).is_file():
        return _ask_package(binary)
    return _remembered("dpkg-owner", [binary, DPKG_STATUS], lambda: _ask_package(binary))


def _ask_package(binary):
    try:
        owner = subprocess.run(["dpkg-query", "-S", str(Path(binary).resolve())], capture_output=True, text=True)
        name = owner.stdout.split(":", 1)[0].strip() if owner.returncode == 0 else ""
        if not name:
            return ""
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        return f"{name} {version.stdout.strip()}" if version.returncode == 0 else name
    except OSError:
        return ""


def host_codename():
    """VERSION_CODENAME of /etc/os-release when the host is Debian, else None."""
    try:
        fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    except OSError:
        return None
    if fields.get("ID", "").strip('"') != "debian":
        return None
    return fields.get("VERSION_CODENAME", "").strip('"') or None


def host_arch():
    try:
        return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _host_emulator(min_version=None):
    """The host's QEMU, or None; also None when it is older than ``min_version`` (then its package,
    which only a chosen emulator records, is not asked for)."""
    binary = shutil.which(BINARY)
    if not binary:
        return None
    version, line = query_version(binary)
    if min_version is not None and version_tuple(version) < version_tuple(min_version):
        return Emulator(binary=Path(binary), version=version, version_line=line, source="host")
    return Emulator(binary=Path(binary), version=version, version_line=line, source="host",
                    package=host_package(binary))


def _pin_matches(record, pin):
    packages = record.get("packages") or {}
    return record.get("version") == pin["version"] and all(
        (packages.get(name) or {}).get("deb_sha256") == deb["deb_sha256"] for name, deb in pin["packages"].items())


def _debian_emulator(suite, cache, refresh=False, lock=None):
    """Debian's QEMU of ``suite`` unpacked in the cache; resolved once, then offline.

    With ``lock`` (a Lock) the packages are exactly the pinned versions and .debs.
    """
    arch = host_arch()
    key = f"emulator-debian-{DEBIAN_PACKAGES[0]}-{suite}-{arch}"
    pin = None
    if lock is not None:
        pin = lock.emulator(DEBIAN_PACKAGES[0], suite, arch)
        if pin is None:
            raise ImageError(f"{lock.path}: no emulator pinned for {DEBIAN_PACKAGES[0]}/{suite}/{arch} "
                             f"(pinned: {lock.describe('emulator')}); run `pkvmlab images lock --qemu {suite}` "
                             "to pin it, or remove the lock file")
    record = None if refresh else cache.get_record(key)
    if record is not None and pin is not None and not _pin_matches(record, pin):
        record = None
    if record is not None and not (Path(record["tree"]) / "usr" / "bin" / BINARY).is_file():
        record = None   # the unpacked tree was removed: unpack again (the .debs are still blobs)
    if record is None:
        record = cache.put_record(key, _fetch_debian(suite, arch, cache, pin, lock.path if lock else None))
    binary = Path(record["tree"]) / "usr" / "bin" / BINARY
    version, line = query_version(binary)
    return Emulator(binary=binary, version=version, version_line=line, source=f"debian:{suite}",
                    package=f"{DEBIAN_PACKAGES[0]} {record['version']}", fetched=record)


def _pinned_debs(archive_for, suite, cache, pin, lock_path):
    """{name: (version, deb sha)} of the pinned .debs: from the cache when intact, else the mirror."""
    debs, missing = {}, []
    for name in DEBIAN_PACKAGES:
        deb = pin["packages"].get(name)
        if deb is None:
            raise ImageError(f"{lock_path}: emulator.{DEBIAN_PACKAGES[0]}/{suite}: packages.{name}: missing; "
                             f"{UPDATE_HINT}")
        if cache.verify_blob(deb["deb_sha256"]):
            debs[name] = (deb["version"], deb["deb_sha256"])
        else:
            missing.append((name, deb))
    if missing:
        archive = archive_for()
        for name, deb in missing:
            try:
                info = archive.show(f"{name}={deb['version']}", suite)
            except ImageError:
                raise ImageError(f"{lock_path}: emulator {name} {deb['version']} is pinned but {suite} on "
                                 f"{archive.mirror} no longer has it; {UPDATE_HINT}") from None
            if info.sha256 and info.sha256 != deb["deb_sha256"]:
                raise ImageError(f"{lock_path}: emulator {name} {deb['version']}: the mirror's .deb has sha256 "
                                 f"{info.sha256}, the lock says {deb['deb_sha256']}")
            debs[name] = (deb["version"], archive.download(info, cache))
    return debs


def _fetch_debian(suite, arch, cache, pin=None, lock_path=None):
    archives = []

    def archive_for():
        if not archives:
            archive = DebianArchive(cache.root / f"apt-{arch}", [suite], arch=arch)
            archive.update()
            archives.append(archive)
        return archives[0]

    if pin is not None:
        debs = _pinned_debs(archive_for, suite, cache, pin, lock_path)
        main_version = pin["version"]
    else:
        archive = archive_for()
        infos = [archive.show(f"{name}/{suite}") for name in DEBIAN_PACKAGES]
        main = infos[0]
        odd = [info for info in infos[1:] if info.version != main.version]
        if odd:
            raise ImageError(f"Debian {suite}: {odd[0].name} {odd[0].version} does not match "
                             f"{main.name} {main.version} (the mirror is mid-update; try again later)")
        debs = {info.name: (info.version, archive.download(info, cache)) for info in infos}
        main_version = main.version
    main_name = DEBIAN_PACKAGES[0]
    safe_version = re.sub(r"[^A-Za-z0-9.+-]", "_", main_version)
    tree = cache.root / "emulators" / f"{main_name}_{safe_version}_{arch}"
    if not (tree / "usr" / "bin" / BINARY).is_file():
        note(f"unpacking {main_name} {main_version} ({suite}, {arch}) into {tree}")
        tree.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=tree.parent, prefix=f".{tree.name}-"))
        try:
            for _, sha in debs.values():
                proc = subprocess.run(["dpkg-deb", "-x", str(cache.blob_path(sha)), str(tmp)],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise ImageError(f"dpkg-deb -x of {cache.blob_path(sha)} failed: {proc.stderr.strip()}")
            if tree.exists():
                shutil.rmtree(tree)
            os.rename(tmp, tree)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    record = {"source": "debian", "suite": suite, "arch": arch, "version": main_version,
              "packages": {name: {"version": version, "deb_sha256": sha} for name, (version, sha) in debs.items()},
              "tree": str(tree), "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "blobs": {name: sha for name, (_, sha) in debs.items()}}
    if archives:
        record["mirror"] = archives[0].mirror
    if lock_path is not None:
        record["pinned_by"] = str(lock_path)
    return record


def resolve_emulator(spec, min_version=None, cache=None, refresh=False, where="--qemu", lock=USE_LOCK_FILE):
    """The Emulator ``spec`` names (see the module docstring); raises ConfigError/ImageError/InfrastructureError.

    ``lock``: images/emulator.lock.json when it exists (default), None for the newest, or a Lock / path;
    it pins the Debian emulators only (a host or file QEMU is what it is, and is recorded as such).
    """
    from .cache import Cache
    cache = cache or Cache()
    if lock is USE_LOCK_FILE:
        lock = read_lock(emulator_lock_path())
    elif lock is not None and not hasattr(lock, "data"):
        lock = read_lock(lock)
    spec = (spec or "auto").strip()
    if spec == "host":
        emulator = _host_emulator()
        if emulator is None:
            raise InfrastructureError(f"{where} host: no {BINARY} on PATH; install it with: "
                                      "sudo apt-get install -y qemu-system-arm")
        return emulator
    if "/" in spec:
        binary = Path(spec).expanduser()
        if not binary.is_file():
            raise ConfigError(where, [f"{where} {spec}: no such QEMU binary"])
        version, line = query_version(binary)
        return Emulator(binary=binary.resolve(), version=version, version_line=line, source="file")
    if spec != "auto":
        return _debian_emulator(spec, cache, refresh, lock)
    host = _host_emulator(min_version)
    if host is not None and (min_version is None or version_tuple(host.version) >= version_tuple(min_version)):
        return host
    codename = host_codename()
    have = f"the host's {BINARY} is {host.version}" if host else f"the host has no {BINARY}"
    if codename is None:
        raise InfrastructureError(f"this board needs QEMU >= {min_version} and {have}; on a non-Debian host give "
                                  f"{where} PATH to a newer qemu-system-aarch64 (or {where} host to accept it)")
    emulator = _debian_emulator(f"{codename}-backports", cache, refresh, lock)
    if min_version and version_tuple(emulator.version) < version_tuple(min_version):
        raise InfrastructureError(f"this board needs QEMU >= {min_version}; {have} and Debian "
                                  f"{codename}-backports has {emulator.version}: give {where} PATH or a suite")
    return emulator
