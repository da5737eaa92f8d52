"""Turn an image-set manifest into a directory of ready files, and record what they are.

Cold: resolve the newest kernel of the suite, download, extract, build the EL
probe and the initramfs, all into the content-addressed cache.  Warm: every
step finds its record in the cache and nothing touches the network.  The
result is a directory (``cache/sets/<name>-<digest>/``) of symlinks named like
the keys a labgrid environment refers to (``kernel``, ``initramfs``,
``elprobe`` or the file keys of a files set) plus ``manifest.json`` (versions,
sha256) and ``SHA256SUMS``.

Every file that will boot (or be pushed to the board) is hashed on every
provisioning, warm or cold, and compared with the sha256 it is recorded under:
a cache blob that no longer matches is dropped and provisioned again, once; a
local file (``files.*``) that does not match, or a blob still wrong after the
second try, is an ImageError naming the file and both hashes.  The record a run
keeps (``images.json``, the JUnit properties) carries the hashes measured then
(``verified``).  When ``images/<set>.lock.json`` exists (``lock.py``) the Debian
packages are exactly the pinned versions.
"""

import fcntl
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from .cache import Cache, sha256_bytes, sha256_file
from .debian import DebianArchive, extract_member
from .initramfs import board_initramfs
from .lock import UPDATE_HINT, lock_path, read_lock
from .progress import note

USE_LOCK_FILE = object()     # provision(lock=...): the set's lock file when it exists
_KERNEL_MEMBER = r"^boot/vmlinuz-"
_KERNEL_BINARY_MEMBER = r"^usr/lib/modules/[^/]+/vmlinuz$"
_BUSYBOX_MEMBER = r"(^|/)bin/busybox$"


@dataclass(frozen=True)
class Provisioned:
    directory: Path
    record: dict

    def path(self, key):
        return self.directory / key

    @property
    def kernel_release(self):
        return self.record.get("kernel", {}).get("release")


@dataclass(frozen=True)
class _Target:
    """A file that will boot: where it is, the sha256 it must have, and whether we can make it again."""
    key: str
    path: Path
    sha256: str
    label: str
    local: bool        # a file of the user's (files.*): never re-made, a mismatch stops the run


class _BadBlob(Exception):
    """An input blob (e.g. busybox for the initramfs) no longer hashes to its name."""

    def __init__(self, label, path, expected, actual):
        super().__init__(label)
        self.target = _Target(label, Path(path), expected, label, local=False)
        self.actual = actual


@contextmanager
def _cache_lock(cache):
    """One provisioner at a time per cache (matrix runs start several)."""
    cache.root.mkdir(parents=True, exist_ok=True)
    with open(cache.root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class _Provisioner:
    def __init__(self, image_set, cache, refresh, lock=None):
        self.image_set = image_set
        self.cache = cache
        self.refresh = refresh
        self.lock = lock             # pkvmlab.images.lock.Lock or None
        self._archive = None

    def archive(self):
        """The apt view of the suites this set needs, updated once per provisioning."""
        if self._archive is None:
            suites = {p.suite for p in (self._debian_kernel(), self.image_set.busybox) if p}
            self._archive = DebianArchive(self.cache.root / "apt", suites)
            self._archive.update()
        return self._archive

    def _debian_kernel(self):
        kernel = self.image_set.kernel
        return kernel.debian if kernel else None

    def cached(self, key, make, accept=None, rebuild=None, resolves=False):
        """The record under ``key`` if it is usable (all blobs present, ``accept``-ed), else rebuilt or made.

        ``rebuild(stale)`` makes the same thing again from a record whose blob went missing
        (e.g. dropped because it no longer matched its sha256); None from it means: make afresh.
        ``resolves``: the record is a version resolution (a Debian package), refreshed also by
        ``refresh="versions"``; ``refresh=True`` re-makes everything.
        """
        refresh = self.refresh is True or (self.refresh == "versions" and resolves)
        record = None if refresh else self.cache.get_record(key)
        if record is not None and accept is not None and not accept(record):
            record = None
        if record is None:
            stale = None if refresh else self.cache.read_record(key)
            if stale is not None and rebuild is not None and (accept is None or accept(stale)):
                record = rebuild(stale)
            if record is None:
                record = make()
            self.cache.put_record(key, record)
        return record

    def blob_bytes(self, sha, label):
        """A blob's bytes, checked against its name (an input of something that boots)."""
        path = self.cache.blob_path(sha)
        data = path.read_bytes()
        actual = sha256_bytes(data)
        if actual != sha:
            raise _BadBlob(label, path, sha, actual)
        return data

    def _pin(self, section, deb):
        """The lock's entry for ``deb`` (None without a lock); ImageError when the lock lacks it."""
        if self.lock is None:
            return None
        pin = self.lock.kernel(deb) if section == "kernel" else self.lock.busybox(deb)
        if pin is None:
            how = f"`pkvmlab images lock --kernel-suite {deb.suite}`" if section == "kernel" else UPDATE_HINT
            raise ImageError(f"{self.lock.path}: no {section} pinned for {deb.package} in {deb.suite} "
                             f"(pinned: {self.lock.describe(section)}); run {how} to pin it, or remove the "
                             "lock file to float to the newest")
        return pin

    @staticmethod
    def _matches(pin):
        """A cached record is the pinned one when it came from the pinned .deb (and file, if pinned)."""
        def accept(record):
            return (record.get("deb_sha256") == pin["deb_sha256"]
                    and (not pin.get("sha256") or record.get("sha256") == pin["sha256"]))
        return accept

    def _pinned_deb(self, role, deb, pin, origin):
        """The blob sha of the exact .deb ``pin`` names: from the cache if intact, else from the mirror."""
        sha = pin["deb_sha256"]
        if self.cache.verify_blob(sha):
            return sha
        self.cache.drop_blob(sha)
        archive = self.archive()
        try:
            info = archive.show(f"{pin['package']}={pin['version']}", deb.suite)
        except ImageError:
            raise ImageError(f"{origin}: {role} {pin['package']} {pin['version']} is pinned but {deb.suite} "
                             f"on {archive.mirror} no longer has it; {UPDATE_HINT}") from None
        if info.sha256 and info.sha256 != sha:
            raise ImageError(f"{origin}: {role} {pin['package']} {pin['version']}: the mirror's .deb has sha256 "
                             f"{info.sha256}, the lock says {sha}; {UPDATE_HINT} if the archive changed it")
        return archive.download(info, self.cache)

    def _from_pin(self, role, deb, pin, origin, pattern):
        """(deb sha, member, file sha) of the file ``pin`` names, extracted from its exact .deb."""
        deb_sha = self._pinned_deb(role, deb, pin, origin)
        if pin.get("member"):
            pattern = "^" + re.escape(pin["member"]) + "$"
        member, data = extract_member(self.cache.blob_path(deb_sha), pattern)
        sha = self.cache.put_bytes(data)
        if pin.get("sha256") and sha != pin["sha256"]:
            raise ImageError(f"{origin}: {role} {pin['package']} {pin['version']}: {member} extracted from "
                             f"{self.cache.blob_path(deb_sha)} has sha256 {sha}, expected {pin['sha256']}")
        return deb_sha, member, sha

    def kernel(self):
        source = self.image_set.kernel
        if source.file:
            return self.cached(f"kernel-file-{source.sha256}", lambda: self._local_kernel(source))
        deb = source.debian
        pin = self._pin("kernel", deb)
        key = f"kernel-debian-{deb.package}-{deb.suite}"
        if pin:
            return self.cached(key, lambda: self._pinned_kernel_record(deb, pin, str(self.lock.path)),
                               accept=self._matches(pin), resolves=True)

        def rebuild(stale):
            origin = f"cache record {self.cache.record_path(key)}"
            return self._again(stale, lambda: self._pinned_kernel_record(deb, stale, origin))
        return self.cached(key, lambda: self._debian_kernel_record(deb), resolves=True, rebuild=rebuild)

    def _again(self, stale, remake):
        """Re-make a dropped blob at the exact version of its stale record; None (make afresh) if impossible."""
        if not all(stale.get(k) for k in ("package", "version", "deb_sha256", "sha256")):
            return None
        try:
            return remake()
        except ImageError as err:
            if "no longer has it" not in str(err):
                raise
            note(f"{err}: resolving afresh")
            return None

    def _pinned_kernel_record(self, deb, pin, origin):
        deb_sha, member, sha = self._from_pin("kernel", deb, pin, origin, _KERNEL_BINARY_MEMBER
                                              if pin["package"].startswith("linux-binary-") else _KERNEL_MEMBER)
        release = member.split("vmlinuz-", 1)[1] if "vmlinuz-" in member else member.split("/")[-2]
        record = {k: pin[k] for k in ("metapackage", "metapackage_version", "filename", "resolved_at") if pin.get(k)}
        record.update({"source": "debian", "suite": deb.suite, "package": pin["package"], "version": pin["version"],
                       "deb_sha256": deb_sha, "member": member, "release": pin.get("release") or release,
                       "sha256": sha, "blobs": {"kernel": sha}})
        if self._archive is not None:
            record["mirror"] = self._archive.mirror
        if self.lock is not None:
            record["pinned_by"] = str(self.lock.path)
        return record

    def _local_kernel(self, source):
        if not source.file.is_file():
            raise ImageError(f"{self.image_set.path}: kernel.file {source.file} not found")
        sha = sha256_file(source.file)
        if sha != source.sha256:
            raise ImageError(f"{self.image_set.path}: kernel.file {source.file}: sha256 is {sha}, "
                             f"the manifest says {source.sha256}")
        self.cache.put_file(source.file)
        return {"source": "file", "path": str(source.file), "release": source.release, "sha256": sha,
                "blobs": {"kernel": sha}}

    def _debian_kernel_record(self, deb):
        archive = self.archive()
        meta = archive.show(f"{deb.package}/{deb.suite}")
        image = meta
        for name, version in meta.depends_names():
            if name.startswith("linux-image-") and name != meta.name:
                image = archive.show(f"{name}={version}" if version else f"{name}/{deb.suite}", deb.suite)
                break
        holder, pattern = image, _KERNEL_MEMBER
        for name, version in image.depends_names():
            if name.startswith("linux-binary-"):
                holder = archive.show(f"{name}={version}" if version else f"{name}/{deb.suite}", deb.suite)
                pattern = _KERNEL_BINARY_MEMBER
                break
        deb_sha = archive.download(holder, self.cache)
        note(f"extracting the kernel from {holder.name} {holder.version}")
        member, data = extract_member(self.cache.blob_path(deb_sha), pattern)
        release = member.split("vmlinuz-", 1)[1] if "vmlinuz-" in member else member.split("/")[-2]
        sha = self.cache.put_bytes(data)
        return {"source": "debian", "suite": deb.suite, "mirror": archive.mirror, "metapackage": meta.name,
                "metapackage_version": meta.version, "package": holder.name, "version": holder.version,
                "filename": holder.filename, "deb_sha256": deb_sha, "member": member, "release": release,
                "sha256": sha, "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "blobs": {"kernel": sha}}

    def busybox(self):
        deb = self.image_set.busybox
        key = f"deb-{deb.package}-{deb.suite}"

        def from_pin(pin, origin):
            deb_sha, member, sha = self._from_pin("busybox", deb, pin, origin, _BUSYBOX_MEMBER)
            record = {"package": pin["package"], "version": pin["version"], "suite": deb.suite,
                      "deb_sha256": deb_sha, "member": member, "sha256": sha, "blobs": {"busybox": sha}}
            if pin.get("filename"):
                record["filename"] = pin["filename"]
            if self.lock is not None:
                record["pinned_by"] = str(self.lock.path)
            return record

        def make():
            archive = self.archive()
            info = archive.show(f"{deb.package}/{deb.suite}")
            deb_sha = archive.download(info, self.cache)
            member, data = extract_member(self.cache.blob_path(deb_sha), _BUSYBOX_MEMBER)
            sha = self.cache.put_bytes(data)
            return {"package": info.name, "version": info.version, "suite": deb.suite, "deb_sha256": deb_sha,
                    "filename": info.filename, "member": member, "sha256": sha, "blobs": {"busybox": sha}}

        pin = self._pin("busybox", deb)
        if pin:
            return self.cached(key, lambda: from_pin(pin, str(self.lock.path)), accept=self._matches(pin),
                               resolves=True)
        return self.cached(key, make, resolves=True, rebuild=lambda stale: self._again(
            stale, lambda: from_pin(stale, f"cache record {self.cache.record_path(key)}")))

    def elprobe(self):
        from .elprobe import build_elprobe, elprobe_source_digest
        source = self.image_set.elprobe
        digest = elprobe_source_digest(source)

        def make():
            note(f"building elprobe from {source} (the first build with ziglang takes ~30 s)")
            with tempfile.TemporaryDirectory(dir=self.cache.work_dir("build")) as tmp:
                out = Path(tmp) / "elprobe"
                info = build_elprobe(source, out)
                sha = self.cache.put_file(out)
            return {"source_digest": digest, "compiler": info.get("compiler"), "sha256": sha,
                    "blobs": {"elprobe": sha}}
        return self.cached(f"elprobe-{digest}", make)

    def initramfs(self, busybox, elprobe):
        init_bytes = self.image_set.init.read_bytes()
        parts = [busybox["sha256"], sha256_bytes(init_bytes), elprobe["sha256"] if elprobe else "-"]
        key = "initramfs-" + sha256_bytes(" ".join(parts).encode())[:32]

        def make():
            note("assembling the initramfs (busybox, /init, elprobe)")
            extra = {"elprobe": self.blob_bytes(elprobe["sha256"], "elprobe (packed into the initramfs)")} \
                if elprobe else {}
            data = board_initramfs(self.blob_bytes(busybox["sha256"], "busybox (packed into the initramfs)"),
                                   init_bytes, extra)
            sha = self.cache.put_bytes(data)
            return {"init_sha256": parts[1], "sha256": sha, "size": len(data), "blobs": {"initramfs": sha}}
        return self.cached(key, make)

    def files(self):
        """The set's ready files as recorded in the manifest; their hashes are measured with the rest."""
        records = {}
        problems = []
        for key, (path, expected) in sorted(self.image_set.files.items()):
            if not path.is_file():
                problems.append(f"{self.image_set.path}: files.{key}: {path} not found")
                continue
            records[key] = {"path": str(path), "sha256": expected}
        if problems:
            raise ImageError("\n".join(problems))
        return records

    def resolve(self):
        """(record, {key: _Target}) of the whole set: every record made or found in the cache."""
        image_set = self.image_set
        record = {"set": image_set.name, "manifest": str(image_set.path)}
        if self.lock is not None:
            record["lock"] = str(self.lock.path)
        targets = {}

        def blob(key, rec, label):
            targets[key] = _Target(key, self.cache.blob_path(rec["sha256"]), rec["sha256"], label, local=False)

        if image_set.kernel:
            k = record["kernel"] = self.kernel()
            blob("kernel", k, f"kernel ({k.get('package', k.get('path'))} {k.get('version', '')})".replace(" )", ")"))
        elprobe = self.elprobe() if image_set.elprobe else None
        if elprobe:
            record["elprobe"] = elprobe
            blob("elprobe", elprobe, "elprobe")
        if image_set.busybox:
            busybox = self.busybox()
            packed = elprobe if image_set.elprobe_in_initramfs else None
            record["initramfs"] = dict(self.initramfs(busybox, packed), busybox=busybox)
            blob("initramfs", record["initramfs"], "initramfs")
        if image_set.files:
            record["files"] = self.files()
            for key, spec in record["files"].items():
                targets[key] = _Target(key, Path(spec["path"]).resolve(), spec["sha256"], f"files.{key}", local=True)
        return record, targets


def _measure(targets):
    """({key: {path, sha256, size}}, [(target, actual sha256 or None)]) of the files that will boot."""
    measured, bad = {}, []
    for key, target in sorted(targets.items()):
        try:
            actual = sha256_file(target.path)
        except FileNotFoundError:
            bad.append((target, None))
            continue
        measured[key] = {"path": str(target.path), "sha256": actual, "size": target.path.stat().st_size}
        if actual != target.sha256:
            bad.append((target, actual))
    return measured, bad


def _mismatch_line(image_set, target, actual, again=False):
    if actual is None:
        return f"{image_set.path}: {target.label}: {target.path} not found"
    if target.local:
        return (f"{image_set.path}: {target.label}: {target.path} has sha256 {actual}, "
                f"the manifest says {target.sha256}")
    when = " after it was fetched/built again" if again else ""
    return f"{image_set.path}: {target.label}: {target.path} has sha256 {actual}{when}, expected {target.sha256}"


def _resolve_lock(image_set, lock):
    if lock is USE_LOCK_FILE:
        return read_lock(lock_path(image_set))
    if lock is None or hasattr(lock, "data"):
        return lock
    return read_lock(lock)


def provision(image_set, cache=None, refresh=False, lock=USE_LOCK_FILE):
    """Provision ``image_set`` (an ImageSet); returns Provisioned. Raises ImageError/InfrastructureError.

    ``refresh``: True re-makes every record (asks the mirror, rebuilds the probe); "versions"
    re-resolves only the Debian packages.  ``lock``: the set's lock file when it exists (default),
    None to float to the newest versions (``pkvmlab images lock --update``), or a Lock / path.
    """
    cache = cache or Cache()
    started = time.monotonic()
    lock = _resolve_lock(image_set, lock)
    dropped = set()
    verify_seconds = 0.0
    with _cache_lock(cache):
        while True:
            prov = _Provisioner(image_set, cache, refresh, lock)
            try:
                record, targets = prov.resolve()
                t0 = time.monotonic()
                measured, bad = _measure(targets)
                verify_seconds += time.monotonic() - t0
            except _BadBlob as err:
                bad = [(err.target, err.actual)]
            if not bad:
                break
            fatal = [(t, a) for t, a in bad if t.local or t.sha256 in dropped or len(dropped) > 8]
            if fatal:
                raise ImageError("\n".join(_mismatch_line(image_set, t, a, again=not t.local) for t, a in fatal))
            for target, actual in bad:
                note(f"{_mismatch_line(image_set, target, actual)}: dropping the cached copy and provisioning "
                     "it again")
                cache.drop_blob(target.sha256)
                dropped.add(target.sha256)
        directory = _materialize(cache, image_set.name, record, targets)
    for key, facts in measured.items():
        section = record["files"][key] if key in record.get("files", {}) else record[key]
        section["sha256"] = facts["sha256"]      # equal to the recorded hash: it was just measured
    record["verified"] = measured
    record["verify_seconds"] = round(verify_seconds, 4)
    if dropped:
        record["refetched"] = sorted(dropped)
    record["provision_seconds"] = round(time.monotonic() - started, 3)
    return Provisioned(directory=directory, record=record)


def _links_ok(directory, targets):
    for key, target in targets.items():
        if os.path.realpath(directory / key) != str(Path(target.path).resolve()):
            return False
    return (directory / "manifest.json").is_file() and (directory / "SHA256SUMS").is_file()


def _materialize(cache, name, record, targets):
    """A directory of symlinks + manifest.json, created atomically, reused when identical.

    A reused directory must still point at the files just measured (a copied cache's
    symlinks point into the original); otherwise it is made again.
    """
    digest = sha256_bytes(json.dumps(record, sort_keys=True).encode())[:16]
    directory = cache.root / "sets" / f"{name}-{digest}"
    if directory.is_dir() and _links_ok(directory, targets):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{name}-"))
    sums = []
    for key, target in sorted(targets.items()):
        os.symlink(target.path, tmp / key)
        sums.append(f"{target.sha256}  {key}\n")
    (tmp / "SHA256SUMS").write_text("".join(sums))
    (tmp / "manifest.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if directory.is_dir():   # stale: move it aside, then put the new one in its place
        old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{name}-old-"))
        os.rename(directory, old / "set")
        shutil.rmtree(old)
    try:
        os.rename(tmp, directory)
    except OSError:
        shutil.rmtree(tmp)   # another provisioner made the same directory first
    return directory
