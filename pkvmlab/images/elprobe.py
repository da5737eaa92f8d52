"""Build the EL probe: a static aarch64 binary from ``images/elprobe/*.c``.

The probe is its own tiny VMM on ``/dev/kvm`` (see the header of
``images/elprobe/elprobe.c``), so one static binary serves the QEMU board, a dev
board over ssh and a rooted Pixel over adb.  Two cross compilers are known:

* ``aarch64-linux-gnu-gcc`` (Debian's ``gcc-aarch64-linux-gnu``), used when on PATH;
* PyPI's ``ziglang`` (a dependency of pkvmlab), whose ``zig cc`` targets
  ``aarch64-linux-musl`` statically and carries the Linux UAPI headers.  Its first
  build compiles musl into zig's cache (about 30 s); later builds take a second.

``PKVMLAB_ELPROBE_CC`` names a compiler command to use instead (split on spaces).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ImageError
from .cache import sha256_bytes

CFLAGS = ["-O2", "-static", "-s", "-Wall", "-Wextra", "-Wno-unused-parameter"]
BUILD_TIMEOUT = 600


def elprobe_sources(source_dir):
    sources = sorted(Path(source_dir).glob("*.c")) + sorted(Path(source_dir).glob("*.h"))
    if not any(p.suffix == ".c" for p in sources):
        raise ImageError(f"{source_dir}: no elprobe C source (*.c) found")
    return sources


def elprobe_source_digest(source_dir):
    """A digest of the sources and flags: the cache key of the built binary."""
    parts = [" ".join(CFLAGS).encode()]
    for path in elprobe_sources(source_dir):
        parts.append(path.name.encode() + b"\0" + path.read_bytes())
    return sha256_bytes(b"\0\0".join(parts))[:32]


def compiler_command():
    """(argv prefix, description) of the cross compiler to use."""
    override = os.environ.get("PKVMLAB_ELPROBE_CC")
    if override:
        return shlex.split(override), f"PKVMLAB_ELPROBE_CC={override}"
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc:
        return [gcc], "aarch64-linux-gnu-gcc"
    try:
        import ziglang  # noqa: F401  (only to learn whether it is installed)
    except ImportError:
        raise ImageError("no aarch64 cross compiler: install the Python package 'ziglang' "
                         "(pip install ziglang) or Debian's gcc-aarch64-linux-gnu") from None
    return [sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-linux-musl"], "zig cc (ziglang)"


def build_elprobe(source_dir, output):
    """Compile the probe to ``output``; returns {"compiler": ...}. Raises ImageError with the compiler's output."""
    prefix, description = compiler_command()
    sources = [str(p) for p in elprobe_sources(source_dir) if p.suffix == ".c"]
    argv = [*prefix, *CFLAGS, "-o", str(output), *sources]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ImageError(f"building elprobe from {source_dir} took over {BUILD_TIMEOUT} s: "
                         f"{' '.join(argv)}") from None
    except OSError as err:
        raise ImageError(f"cannot run the cross compiler {prefix[0]}: {err}") from None
    if proc.returncode != 0 or not Path(output).is_file():
        raise ImageError(f"building elprobe from {source_dir} failed (exit {proc.returncode}):\n"
                         f"$ {' '.join(argv)}\n{(proc.stderr or proc.stdout).strip()[-4000:]}")
    header = Path(output).read_bytes()[:20]
    # ELF, 64-bit, little-endian, e_machine 183 (EM_AARCH64)
    if header[:4] != b"\x7fELF" or header[4] != 2 or int.from_bytes(header[18:20], "little") != 183:
        raise ImageError(f"{description} did not produce an aarch64 ELF binary ({output})")
    return {"compiler": description}
