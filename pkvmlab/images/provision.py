"""Turn an image-set manifest into a directory of ready files, and record what they are.

Cold: resolve the newest kernel of the suite, download, extract, build the EL
probe and the initramfs, all into the content-addressed cache.  Warm: every
step finds its record in the cache and nothing touches the network.  The
result is a directory (``cache/sets/<name>-<digest>/``) of symlinks named like
the keys a labgrid environment refers to (``kernel``, ``initramfs``,
``elprobe`` or the file keys of a files set) plus ``manifest.json`` (versions,
sha256) and ``SHA256SUMS``.
"""

import fcntl
import json
import os
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
from .progress import note


@dataclass(frozen=True)
class Provisioned:
    directory: Path
    record: dict

    def path(self, key):
        return self.directory / key

    @property
    def kernel_release(self):
        return self.record.get("kernel", {}).get("release")


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
    def __init__(self, image_set, cache, refresh):
        self.image_set = image_set
        self.cache = cache
        self.refresh = refresh
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

    def cached(self, key, make):
        record = None if self.refresh else self.cache.get_record(key)
        if record is None:
            record = self.cache.put_record(key, make())
        return record

    def kernel(self):
        source = self.image_set.kernel
        if source.file:
            return self.cached(f"kernel-file-{source.sha256}", lambda: self._local_kernel(source))
        deb = source.debian
        return self.cached(f"kernel-debian-{deb.package}-{deb.suite}", lambda: self._debian_kernel_record(deb))

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
        holder, pattern = image, r"^boot/vmlinuz-"
        for name, version in image.depends_names():
            if name.startswith("linux-binary-"):
                holder = archive.show(f"{name}={version}" if version else f"{name}/{deb.suite}", deb.suite)
                pattern = r"^usr/lib/modules/[^/]+/vmlinuz$"
                break
        deb_sha = archive.download(holder, self.cache)
        note(f"extracting the kernel from {holder.name} {holder.version}")
        member, data = extract_member(self.cache.blob_path(deb_sha), pattern)
        release = member.split("vmlinuz-", 1)[1] if "vmlinuz-" in member else member.split("/")[-2]
        sha = self.cache.put_bytes(data)
        return {"source": "debian", "suite": deb.suite, "mirror": archive.mirror, "metapackage": meta.name,
                "metapackage_version": meta.version, "package": holder.name, "version": holder.version,
                "deb_sha256": deb_sha, "member": member, "release": release, "sha256": sha,
                "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "blobs": {"kernel": sha}}

    def busybox(self):
        deb = self.image_set.busybox

        def make():
            archive = self.archive()
            info = archive.show(f"{deb.package}/{deb.suite}")
            deb_sha = archive.download(info, self.cache)
            member, data = extract_member(self.cache.blob_path(deb_sha), r"(^|/)bin/busybox$")
            sha = self.cache.put_bytes(data)
            return {"package": info.name, "version": info.version, "suite": deb.suite, "deb_sha256": deb_sha,
                    "member": member, "sha256": sha, "blobs": {"busybox": sha}}
        return self.cached(f"deb-{deb.package}-{deb.suite}", make)

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
            extra = {"elprobe": self.cache.blob_path(elprobe["sha256"]).read_bytes()} if elprobe else {}
            data = board_initramfs(self.cache.blob_path(busybox["sha256"]).read_bytes(), init_bytes, extra)
            sha = self.cache.put_bytes(data)
            return {"init_sha256": parts[1], "sha256": sha, "size": len(data), "blobs": {"initramfs": sha}}
        return self.cached(key, make)

    def files(self):
        records = {}
        problems = []
        for key, (path, expected) in sorted(self.image_set.files.items()):
            if not path.is_file():
                problems.append(f"{self.image_set.path}: files.{key}: {path} not found")
                continue
            sha = sha256_file(path)
            if sha != expected:
                problems.append(f"{self.image_set.path}: files.{key}: {path} has sha256 {sha}, "
                                f"the manifest says {expected}")
            records[key] = {"path": str(path), "sha256": sha}
        if problems:
            raise ImageError("\n".join(problems))
        return records


def provision(image_set, cache=None, refresh=False):
    """Provision ``image_set`` (an ImageSet); returns Provisioned. Raises ImageError/InfrastructureError."""
    cache = cache or Cache()
    started = time.monotonic()
    with _cache_lock(cache):
        prov = _Provisioner(image_set, cache, refresh)
        record = {"set": image_set.name, "manifest": str(image_set.path)}
        links = {}
        if image_set.kernel:
            record["kernel"] = prov.kernel()
            links["kernel"] = record["kernel"]["sha256"]
        elprobe = prov.elprobe() if image_set.elprobe else None
        if elprobe:
            record["elprobe"] = elprobe
            links["elprobe"] = elprobe["sha256"]
        if image_set.busybox:
            busybox = prov.busybox()
            packed = elprobe if image_set.elprobe_in_initramfs else None
            record["initramfs"] = dict(prov.initramfs(busybox, packed), busybox=busybox)
            links["initramfs"] = record["initramfs"]["sha256"]
        if image_set.files:
            record["files"] = prov.files()
            outside = {key: (Path(spec["path"]).resolve(), spec["sha256"]) for key, spec in record["files"].items()}
        else:
            outside = {}
        targets = {key: (cache.blob_path(sha), sha) for key, sha in links.items()}
        directory = _materialize(cache, image_set.name, record, {**targets, **outside})
    record["provision_seconds"] = round(time.monotonic() - started, 3)
    return Provisioned(directory=directory, record=record)


def _materialize(cache, name, record, links):
    """A directory of symlinks + manifest.json, created atomically, reused when identical."""
    digest = sha256_bytes(json.dumps(record, sort_keys=True).encode())[:16]
    directory = cache.root / "sets" / f"{name}-{digest}"
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{name}-"))
    sums = []
    for key, (target, sha) in sorted(links.items()):
        os.symlink(target, tmp / key)
        sums.append(f"{sha}  {key}\n")
    (tmp / "SHA256SUMS").write_text("".join(sums))
    (tmp / "manifest.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    try:
        os.rename(tmp, directory)
    except OSError:
        shutil.rmtree(tmp)   # another provisioner made the same directory first
    return directory
