"""Image-set manifests (``images/<set>.yaml``): what a board boots, as data.

Two shapes exist.  A *built* set names a kernel (a Debian package from a suite,
resolved to the newest version there, or a local file with its sha256) and an
initramfs assembled from Debian's busybox-static, our /init and the EL probe.
A *files* set lists ready images (e.g. a Pixel's boot.img) each with the sha256
it must have.  Validation reports every problem with file:line:field.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..boards import project_root
from ..errors import UnknownNameError
from ..yamlfile import Field, check_fields, load_yaml, raise_if_problems

_DEBIAN = {"package": Field((str,), required=True), "suite": Field((str,), required=True)}
_KERNEL = {
    "debian": Field((dict,), schema=_DEBIAN),
    "file": Field((str,)),
    "sha256": Field((str,)),
    "release": Field((str,)),
}
_INITRAMFS = {
    "busybox": Field((dict,), required=True, schema=_DEBIAN),
    "init": Field((str,), required=True),
    "elprobe": Field((str,)),
}
_FILE = {"path": Field((str,), required=True), "sha256": Field((str,), required=True)}
_SET = {
    "name": Field((str,), required=True),
    "description": Field((str,)),
    "kernel": Field((dict,), schema=_KERNEL),
    "initramfs": Field((dict,), schema=_INITRAMFS),
    "files": Field((dict,)),
    "elprobe": Field((str,)),
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DebianPackage:
    package: str
    suite: str


@dataclass(frozen=True)
class KernelSource:
    debian: DebianPackage = None
    file: Path = None
    sha256: str = None
    release: str = None


@dataclass(frozen=True)
class ImageSet:
    name: str
    path: Path
    description: str = ""
    kernel: KernelSource = None
    busybox: DebianPackage = None
    init: Path = None
    elprobe: Path = None                        # EL probe source dir (built for the board)
    files: dict = field(default_factory=dict)   # key -> (Path, sha256)
    elprobe_in_initramfs: bool = False          # packed into the initramfs as /bin/elprobe, else pushed

    def with_kernel_suite(self, suite):
        """The same set booting the newest kernel of another Debian suite (for the matrix)."""
        package = self.kernel.debian.package if self.kernel and self.kernel.debian else "linux-image-arm64"
        return ImageSet(self.name, self.path, self.description, KernelSource(DebianPackage(package, suite)),
                        self.busybox, self.init, self.elprobe, self.files, self.elprobe_in_initramfs)


def images_dir(root=None):
    return Path(root or project_root()) / "images"


def known_image_sets(root=None):
    return sorted(p.stem for p in images_dir(root).glob("*.yaml"))


def load_image_set(name_or_path, root=None):
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        path = candidate
    else:
        path = images_dir(root) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UnknownNameError("image set", name_or_path, known_image_sets(root), where=str(images_dir(root)))
    data = load_yaml(path)
    problems = check_fields(path, data, _SET)
    base = path.parent

    kernel = None
    if isinstance(data.get("kernel"), dict):
        k = data["kernel"]
        if ("debian" in k) == ("file" in k):
            problems.append(f"{path}:{k.line}: kernel: give exactly one of 'debian' or 'file'")
        if "file" in k:
            if not _SHA256.match(str(k.get("sha256", ""))):
                problems.append(f"{path}:{k.line_of('sha256')}: kernel.sha256: a 64-hex-digit sha256 is required "
                                "with kernel.file")
            if "release" not in k:
                problems.append(f"{path}:{k.line}: kernel.release: required with kernel.file (the uname -r it boots)")
        deb = k.get("debian")
        kernel = KernelSource(
            debian=DebianPackage(deb["package"], deb["suite"]) if isinstance(deb, dict) and not _missing(deb) else None,
            file=(base / k["file"]) if isinstance(k.get("file"), str) else None,
            sha256=k.get("sha256"), release=k.get("release"))

    busybox = init = elprobe = None
    if isinstance(data.get("initramfs"), dict):
        i = data["initramfs"]
        bb = i.get("busybox")
        if isinstance(bb, dict) and not _missing(bb):
            busybox = DebianPackage(bb["package"], bb["suite"])
        if isinstance(i.get("init"), str):
            init = base / i["init"]
            if not init.is_file():
                problems.append(f"{path}:{i.line_of('init')}: initramfs.init: {init} not found")
        if isinstance(i.get("elprobe"), str):
            elprobe = base / i["elprobe"]
            if not elprobe.is_dir():
                problems.append(f"{path}:{i.line_of('elprobe')}: initramfs.elprobe: source dir {elprobe} not found")
    in_initramfs = elprobe is not None
    if isinstance(data.get("elprobe"), str):
        # A set without an initramfs (a phone's images): the probe is built and pushed to the device.
        if elprobe is not None:
            problems.append(f"{path}:{data.line_of('elprobe')}: elprobe: give it here or under initramfs, not both")
        elprobe = base / data["elprobe"]
        if not elprobe.is_dir():
            problems.append(f"{path}:{data.line_of('elprobe')}: elprobe: source dir {elprobe} not found")

    files = {}
    if isinstance(data.get("files"), dict):
        for key, spec in data["files"].items():
            where = f"{path}:{data['files'].line_of(key)}: files.{key}"
            if not isinstance(spec, dict):
                problems.append(f"{where}: must be a mapping with path and sha256")
                continue
            check_fields(path, spec, _FILE, prefix=f"files.{key}.", problems=problems)
            if "sha256" in spec and not _SHA256.match(str(spec["sha256"]).lower()):
                problems.append(f"{path}:{spec.line_of('sha256')}: files.{key}.sha256: not a 64-hex-digit sha256")
            if isinstance(spec.get("path"), str):
                files[key] = (base / spec["path"], str(spec.get("sha256", "")).lower())
    if "kernel" not in data and "files" not in data:
        problems.append(f"{path}:{data.line}: an image set needs 'kernel' (+ 'initramfs') or 'files'")
    raise_if_problems(path, problems)
    return ImageSet(name=data["name"], path=path, description=data.get("description", ""), kernel=kernel,
                    busybox=busybox, init=init, elprobe=elprobe, files=files, elprobe_in_initramfs=in_initramfs)


def _missing(mapping):
    return not all(isinstance(mapping.get(k), str) for k in ("package", "suite"))
