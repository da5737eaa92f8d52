"""Fetch Debian packages on any host, without root and without touching the system.

arm64 packages for what the boards boot; the host's own architecture for the
emulator (``emulator.py``).

apt does the resolving: a private state directory inside the cache
(``apt/``) holds the package lists of the suites we need, fetched with the
host's own apt and the archive keyring, so the lists are signature-checked.
The SHA256 that apt-cache reports for a package therefore is trustworthy, and
we download the .deb ourselves (to show progress) and check it against that.

The mirror is the one the host's apt already uses, or $PKVMLAB_DEBIAN_MIRROR.
"""

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, InfrastructureError
from .progress import Progress, note

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# apt-get update's words for a suite the mirror does not have.
_NO_RELEASE_FILE = re.compile(r"The repository '\S+ (\S+) Release' does not have a Release file")
_DEBIAN_SUITE = re.compile(
    r"^(buster|bullseye|bookworm|trixie|forky|duke|sid|unstable|testing|stable)(-updates|-backports)?$")


def host_debian_mirror():
    """The first Debian archive URI in the host's apt sources (not -security), or None."""
    candidates = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        uris, suites = [], []
        for line in path.read_text(errors="replace").splitlines() + [""]:
            if not line.strip():
                if uris and any(_DEBIAN_SUITE.match(s) for s in suites):
                    candidates.extend(uris)
                uris, suites = [], []
            elif line.startswith("URIs:"):
                uris = line.split(":", 1)[1].split()
            elif line.startswith("Suites:"):
                suites = line.split(":", 1)[1].split()
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[.*?\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and _DEBIAN_SUITE.match(words[2]):
                candidates.append(words[1])
    return candidates[0].rstrip("/") if candidates else None


def debian_mirror():
    mirror = os.environ.get("PKVMLAB_DEBIAN_MIRROR") or host_debian_mirror()
    if not mirror:
        raise InfrastructureError(
            "no Debian mirror found in /etc/apt/sources.list{,.d}; set PKVMLAB_DEBIAN_MIRROR to a Debian "
            "archive URL (the directory holding dists/ and pool/)")
    return mirror.rstrip("/")


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    filename: str
    size: int
    sha256: str
    depends: str

    def depends_names(self):
        """Names in Depends (first alternative of each), with their '= version' pin if any."""
        result = []
        for clause in self.depends.split(","):
            first = clause.split("|")[0].strip()
            match = re.match(r"^([^\s(]+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?", first)
            if match:
                result.append((match.group(1).split(":")[0], match.group(2)))
        return result


def _parse_stanza(text):
    fields = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


class DebianArchive:
    """apt, pointed at a private state dir, answering for arm64 packages of chosen suites."""

    def __init__(self, root, suites, mirror=None, arch="arm64"):
        self.root = Path(root)
        self.suites = sorted(set(suites))
        self.arch = arch
        self.mirror = mirror or debian_mirror()
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if not shutil.which(tool):
                raise InfrastructureError(f"'{tool}' not found: provisioning Debian packages needs apt and dpkg "
                                          "(any Debian or Ubuntu host has them)")
        if not Path(KEYRING).is_file():
            raise InfrastructureError(f"Debian archive keyring {KEYRING} missing: apt-get install "
                                      "debian-archive-keyring")

    def _options(self):
        return [
            f"-oAPT::Architecture={self.arch}", f"-oAPT::Architectures::={self.arch}",
            f"-oDir::State::Lists={self.root / 'lists'}",
            f"-oDir::Etc::SourceList={self.root / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::Cache={self.root / 'cache'}",
            "-oDir::State::status=/dev/null", "-oDebug::NoLocking=1",
        ]

    def update(self):
        """Fetch the package lists of our suites (a few seconds, ~30 MB)."""
        (self.root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (self.root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        lines = [f"deb [signed-by={KEYRING}] {self.mirror} {suite} main" for suite in self.suites]
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        note(f"updating {self.arch} package lists for {', '.join(self.suites)} from {self.mirror}")
        proc = subprocess.run(["apt-get", *self._options(), "-q", "update"], capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        missing = sorted(set(_NO_RELEASE_FILE.findall(output)) & set(self.suites))
        if missing:
            raise ImageError(f"Debian suite {', '.join(repr(s) for s in missing)} not found on {self.mirror} "
                             "(the mirror has no Release file for it): check the image set's kernel.debian.suite, "
                             "busybox suite or --kernel-suite")
        errors = [line for line in output.splitlines() if line.startswith(("E:", "W:", "Err:"))]
        if proc.returncode != 0 or any(line.startswith(("E:", "Err:")) for line in errors):
            raise InfrastructureError(f"apt-get update for {self.mirror} ({', '.join(self.suites)}) failed:\n"
                                      + "\n".join(errors[-10:] or [proc.stderr[-2000:]]))

    def show(self, spec, suite_for_message=None):
        """PackageInfo for 'name/suite' or 'name=version'; ImageError naming package and suite if absent."""
        proc = subprocess.run(["apt-cache", *self._options(), "show", spec], capture_output=True, text=True)
        stanza = proc.stdout.strip().split("\n\n")[0] if proc.stdout.strip() else ""
        fields = _parse_stanza(stanza)
        if proc.returncode != 0 or "Package" not in fields:
            name, _, suite = spec.partition("/")
            where = f"suite '{suite}'" if suite else f"version '{spec.partition('=')[2]}'"
            if suite_for_message:
                where += f" of suite '{suite_for_message}'"
            raise ImageError(f"package '{name.split('=')[0]}' ({self.arch}) not found in {where} on {self.mirror}")
        return PackageInfo(name=fields["Package"], version=fields["Version"], filename=fields["Filename"],
                           size=int(fields.get("Size", 0)), sha256=fields.get("SHA256", ""),
                           depends=fields.get("Depends", ""))

    def download(self, info, cache):
        """Download one .deb into the cache (progress shown, sha256 checked); returns its blob sha."""
        if info.sha256 and cache.has_blob(info.sha256):
            if cache.verify_blob(info.sha256):
                return info.sha256
            cache.drop_blob(info.sha256)   # a cached .deb that no longer matches: fetch it again
        url = f"{self.mirror}/{info.filename}"
        work = cache.work_dir("downloads")
        with tempfile.NamedTemporaryFile(dir=work, suffix=".deb", delete=False) as tmp:
            progress = Progress(f"downloading {info.name} {info.version}", info.size)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        tmp.write(chunk)
                        progress.update(len(chunk))
            except (urllib.error.URLError, OSError) as err:
                os.unlink(tmp.name)
                raise InfrastructureError(f"download of {url} failed: {err}") from None
            progress.finish()
        try:
            sha = cache.put_file(tmp.name)
        finally:
            os.unlink(tmp.name)
        if info.sha256 and sha != info.sha256:
            raise ImageError(f"{url}: sha256 {sha} does not match the signed package list ({info.sha256})")
        return sha


def extract_member(deb_path, pattern):
    """Extract the first file of a .deb whose path matches ``pattern``; returns (member path, bytes)."""
    regex = re.compile(pattern)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    found = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if member.isfile() and regex.search(name):
                    found = (name, tar.extractfile(member).read())
                    break
    finally:
        proc.stdout.close()
        proc.kill()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.wait()
    if found is None:
        raise ImageError(f"{deb_path}: no file matching {pattern} in the package {stderr.strip()}")
    return found
