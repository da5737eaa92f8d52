"""Host tools a board needs, checked before a run starts, with the exact fix when missing."""

import os
import shutil
import subprocess

from .errors import InfrastructureError

QEMU_BINARY = "qemu-system-aarch64"
QEMU_PACKAGE = "qemu-system-arm"    # Debian's package holding qemu-system-aarch64


def ensure_qemu(auto_install=True, echo=print):
    """Return the QEMU binary's path; as root with apt, install it if missing, else say how."""
    path = shutil.which(QEMU_BINARY)
    if path:
        return path
    command = ["apt-get", "install", "-y", QEMU_PACKAGE]
    if auto_install and os.geteuid() == 0 and shutil.which("apt-get"):
        echo(f"pkvmlab: {QEMU_BINARY} not found; installing: {' '.join(command)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL)
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        path = shutil.which(QEMU_BINARY)
        if path:
            return path
        raise InfrastructureError(f"installing {QEMU_PACKAGE} failed:\n{proc.stderr[-2000:]}")
    raise InfrastructureError(f"{QEMU_BINARY} not found; install it with: sudo {' '.join(command)}")
