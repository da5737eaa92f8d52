"""Lock files: the exact Debian packages an image set (and the emulator) provision.

Without a lock, a set's ``kernel.debian`` means "the newest kernel of the
suite", so two machines (or one machine a week apart) may boot different
kernels.  ``pkvmlab images lock`` writes ``images/<set>.lock.json`` next to the
manifest: for each Debian package provisioned, its suite, exact name and
version, the pool file name, the .deb's sha256 and the sha256 of the file
extracted from it.  When that file exists, provisioning fetches exactly those
versions; a pinned version the mirror no longer lists is an ImageError, never
an upgrade.  The emulator is the board's, not the image set's, so its pins
live in ``images/emulator.lock.json``.

Shape (version 1)::

    {"lock_version": 1, "image_set": "qemu-arm64",
     "kernel":  {"linux-image-arm64/trixie-backports": {<pin>}},
     "busybox": {"busybox-static/trixie": {<pin>}}}
    {"lock_version": 1, "emulator": {"qemu-system-arm/bookworm-backports/amd64":
                                     {"version": ..., "packages": {<name>: {<pin>}}}}}

A pin is ``{"package", "version", "deb_sha256", "filename"?, "member"?, "sha256"?, ...}``.
"""

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .manifest import images_dir

LOCK_VERSION = 1
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
UPDATE_HINT = "run `pkvmlab images lock --update`"


def lock_path(image_set):
    """``images/<set>.lock.json`` beside the set's manifest."""
    path = Path(image_set.path)
    return path.with_name(f"{path.stem}.lock.json")


def emulator_lock_path(root=None):
    return images_dir(root) / "emulator.lock.json"


@dataclass(frozen=True)
class Lock:
    path: Path
    data: dict

    def pin(self, section, key):
        return (self.data.get(section) or {}).get(key)

    def kernel(self, deb):
        return self.pin("kernel", f"{deb.package}/{deb.suite}")

    def busybox(self, deb):
        return self.pin("busybox", f"{deb.package}/{deb.suite}")

    def emulator(self, package, suite, arch):
        return self.pin("emulator", f"{package}/{suite}/{arch}")

    def describe(self, section):
        return ", ".join(sorted(self.data.get(section) or {})) or "none"


def _check_pin(path, where, pin, problems, fields=("package", "version", "deb_sha256")):
    if not isinstance(pin, dict):
        problems.append(f"{path}: {where}: must be an object")
        return
    for name in fields:
        if not isinstance(pin.get(name), str) or not pin[name]:
            problems.append(f"{path}: {where}.{name}: missing")
    for name in ("deb_sha256", "sha256"):
        if name in pin and not _SHA256.match(str(pin[name])):
            problems.append(f"{path}: {where}.{name}: not a 64-hex-digit sha256 ({pin[name]!r})")


def read_lock(path):
    """The Lock at ``path``, None when there is none; ConfigError naming file and field when malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(path, [f"{path}:{getattr(err, 'lineno', 1)}: not valid JSON: {err}"]) from None
    problems = []
    if not isinstance(data, dict):
        raise ConfigError(path, [f"{path}: a lock file is a JSON object"])
    if data.get("lock_version") != LOCK_VERSION:
        problems.append(f"{path}: lock_version: must be {LOCK_VERSION} (got {data.get('lock_version')!r})")
    for section in ("kernel", "busybox", "emulator"):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            problems.append(f"{path}: {section}: must be an object")
            continue
        for key, pin in entries.items():
            if section == "emulator":
                _check_pin(path, f"{section}.{key}", pin, problems, fields=("version",))
                for name, deb in (pin.get("packages") or {}).items() if isinstance(pin, dict) else ():
                    _check_pin(path, f"{section}.{key}.packages.{name}", deb, problems,
                               fields=("version", "deb_sha256"))
            else:
                _check_pin(path, f"{section}.{key}", pin, problems)
    if problems:
        raise ConfigError(path, problems)
    return Lock(path, data)


def write_lock(path, data):
    """Write ``data`` (sections as above) atomically, with lock_version and a time stamp."""
    path = Path(path)
    body = {"lock_version": LOCK_VERSION, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: v for k, v in data.items() if k not in ("lock_version", "written_at")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(body, tmp, indent=2, sort_keys=True)
        tmp.write("\n")
    os.replace(tmp.name, path)
    return Lock(path, body)


_PIN_FIELDS = ("package", "version", "suite", "filename", "deb_sha256", "member", "sha256", "release",
               "metapackage", "metapackage_version")


def pin_from_record(record):
    """The lock entry for a provisioning record of a Debian kernel or busybox."""
    return {k: record[k] for k in _PIN_FIELDS if record.get(k) is not None}
