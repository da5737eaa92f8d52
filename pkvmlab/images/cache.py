"""A content-addressed cache of image files.

Every kernel, initramfs and probe binary is stored once under its sha256, so a
second run needs no network and the record of a run can name exactly what it
booted.  Small JSON records (``records/<key>.json``) remember how a name
(e.g. "newest linux-image-arm64 in trixie-backports") was resolved, so a warm
run does not ask the mirror again.  Writes go to a temp file then rename: a
crash never leaves a half-written blob under its final name.
"""

import hashlib
import json
import mmap
import os
import shutil
import tempfile
from pathlib import Path


def default_cache_dir():
    """$PKVMLAB_CACHE, else $XDG_CACHE_HOME/pkvmlab, else ~/.cache/pkvmlab."""
    if os.environ.get("PKVMLAB_CACHE"):
        return Path(os.environ["PKVMLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pkvmlab"


HASH_SPAN = 64 << 20     # bytes hashed per call: a signal waits for at most one span (about 35 ms)


def sha256_file(path):
    """The file's sha256, hashed from a memory map in a few large calls.

    Why not a loop of 1 MB reads: each read and each update lets go of the GIL and must get it
    back, and while another thread runs Python (``pkvmlab run`` imports labgrid beside the
    provisioning check, pkvmlab/earlyboot.py) every such hand-back waits up to the interpreter's
    switch interval (5 ms).  Measured on the 2-core CI machine, the 52 MB kernel: 0.137 s in the
    read loop beside labgrid's import, 0.033 s alone; a memory map needs no reads and one
    update per HASH_SPAN.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return digest.hexdigest()
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
            for start in range(0, size, HASH_SPAN):
                digest.update(view[start:start + HASH_SPAN])
    return digest.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


class Cache:
    """Blobs by sha256 plus named JSON records, under one root directory."""

    def __init__(self, root=None):
        self.root = Path(root or default_cache_dir())

    def blob_path(self, sha256):
        return self.root / "blobs" / "sha256" / sha256

    def has_blob(self, sha256):
        return self.blob_path(sha256).is_file()

    def _needs_write(self, target, sha):
        """True unless ``target`` already holds the bytes named ``sha`` (a corrupted blob is replaced)."""
        return not target.is_file() or sha256_file(target) != sha

    def put_file(self, path):
        """Copy ``path`` into the cache; returns its sha256."""
        sha = sha256_file(path)
        target = self.blob_path(sha)
        if self._needs_write(target, sha):
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, tmp)
            os.replace(tmp.name, target)
            os.chmod(target, 0o444)
        return sha

    def put_bytes(self, data):
        sha = sha256_bytes(data)
        target = self.blob_path(sha)
        if self._needs_write(target, sha):
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, target)
            os.chmod(target, 0o444)
        return sha

    def verify_blob(self, sha256):
        """True when the blob exists and still hashes to its name."""
        path = self.blob_path(sha256)
        return path.is_file() and sha256_file(path) == sha256

    def is_blob(self, path):
        """Whether ``path`` is a blob of this cache (something provisioning can fetch or build again)."""
        try:
            return Path(path).resolve().parent == self.blob_path("x").parent.resolve()
        except OSError:
            return False

    def drop_blob(self, sha256):
        """Remove a blob (e.g. one that no longer hashes to its name); records naming it become stale."""
        try:
            self.blob_path(sha256).unlink()
        except FileNotFoundError:
            pass

    def record_path(self, key):
        safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in key)
        return self.root / "records" / f"{safe}.json"

    def get_record(self, key):
        """The record stored under ``key`` if all blobs it names are present, else None."""
        path = self.record_path(key)
        try:
            record = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not all(self.has_blob(sha) for sha in record.get("blobs", {}).values()):
            return None
        return record

    def read_record(self, key):
        """The record stored under ``key`` even when blobs it names are gone (for a rebuild), else None."""
        try:
            return json.loads(self.record_path(key).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def put_record(self, key, record):
        path = self.record_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as tmp:
            json.dump(record, tmp, indent=2, sort_keys=True)
        os.replace(tmp.name, path)
        return record

    def work_dir(self, name):
        """A scratch directory inside the cache (same filesystem, so renames are atomic)."""
        path = self.root / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path
