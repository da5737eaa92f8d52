"""No orphans: helper processes that die with the harness, and temp dirs that a later run can prove stale.

Every long-lived process pkvmlab starts (QEMU for ``PkvmQEMUDriver`` and for the
power switch of the U-Boot/UEFI boards, the ``pkvmlab run`` of each matrix
cell) is started with ``preexec_fn=die_with_parent()``: the child asks Linux
(``prctl(PR_SET_PDEATHSIG)``) for a signal the moment its parent goes away.
Cleanup code in the harness (labgrid's ``atexit`` handler, driver deactivation,
the SIGTERM/SIGINT/SIGHUP handler of the pytest plugin) cannot run after a
SIGKILL, an OOM kill or a crash of the interpreter; the kernel's death signal
does.  Measured before this module: ``kill -KILL`` of ``pkvmlab run`` left QEMU
running under PID 1 and ``/tmp/labgrid-qemu-tmp-*`` behind.

Two properties of ``PR_SET_PDEATHSIG`` the callers rely on:

* it fires when the *thread* that forked the child ends, not the process.  So a
  child must be started from a thread that outlives it: pytest's main thread
  (QEMU of ``PkvmQEMUDriver``), the power switch's single server thread, which
  stops QEMU before it ends (``QEMUPowerSwitchDriver``), or a matrix worker
  thread, which blocks in ``subprocess.run`` until its cell has exited.  A child
  started from a short-lived thread would be killed when that thread ends: a
  loud failure, never an orphan.
* a parent that dies between ``fork`` and ``prctl`` sends nothing; the child
  checks ``getppid()`` after ``prctl`` and kills itself with the same signal if
  its parent already changed.

``preexec_fn`` runs between fork and exec, where a multi-threaded parent's locks
may be held by threads that do not exist in the child: so libc and ``prctl`` are
resolved here, at import, and the function run in the child only makes that one
foreign call, ``getppid`` and, at worst, ``kill``; it imports and logs nothing.

Temp dirs: a directory the harness creates outside its run directory (labgrid's
``QEMUDriver`` makes ``$TMPDIR/labgrid-qemu-tmp-*`` for QEMU's console socket)
gets an owner file (``mark_owned``) with the harness's pid and that process's
start time (``/proc/<pid>/stat`` field 22, which tells a reused pid from the
owner).  It is removed on normal exit and on SIGTERM/SIGINT/SIGHUP by the
driver; after a SIGKILL, the next run's ``sweep_stale`` removes those whose owner
is dead.  A directory without a readable owner file is not provably ours and is
left alone.

On other systems than Linux there is no ``PR_SET_PDEATHSIG``: ``die_with_parent``
returns ``None`` (no ``preexec_fn``) and children can outlive a SIGKILLed harness.
"""

import ctypes
import ctypes.util
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile

PR_SET_PDEATHSIG = 1
OWNER_FILE = ".pkvmlab-owner"

_prctl = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    _prctl = _libc.prctl
    _prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _prctl.restype = ctypes.c_int


def die_with_parent(sig=signal.SIGKILL):
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when the forking thread ends.

    Returns None where the kernel offers no such thing (not Linux).
    """
    if _prctl is None:
        return None
    parent = os.getpid()
    signum = int(sig)

    def in_child():
        if _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:     # the parent died before prctl: nobody would send the signal
            os.kill(os.getpid(), signum)
            os._exit(128 + signum)
    return in_child


def stop(process, grace=5.0):
    """SIGTERM ``process`` (a Popen), and SIGKILL it if it has not exited within ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _start_time(pid):
    """The start time of process ``pid`` in clock ticks since boot, or None when there is no such process
    or it is a zombie (dead, not yet reaped: where no init reaps orphans, as in some containers)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def mark_owned(directory):
    """Write the owner file into ``directory``: this process's pid and start time."""
    with open(os.path.join(directory, OWNER_FILE), "w") as file:
        file.write(f"{os.getpid()} {_start_time(os.getpid())}\n")


def owner_alive(directory):
    """True when the owner recorded in ``directory`` runs, False when it is dead, None when unknown."""
    try:
        with open(os.path.join(directory, OWNER_FILE)) as file:
            pid, started = file.read().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None
    if _start_time(os.getpid()) is None:    # no /proc here: nothing can be proven dead
        return None
    return _start_time(pid) == started


def sweep_stale(pattern, directory=None):
    """Remove directories matching ``pattern`` in ``directory`` (default: the temp dir) whose owner is dead.

    Only directories carrying our owner file are candidates; returns the paths removed.
    """
    removed = []
    for path in glob.glob(os.path.join(directory or tempfile.gettempdir(), pattern)):
        if os.path.isdir(path) and not os.path.islink(path) and owner_alive(path) is False:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
