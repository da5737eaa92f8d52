"""QEMU started paused from the last run's command line while labgrid loads; used only if the driver's is the same.

Why: ``pkvmlab run`` knows QEMU's command line only once labgrid is imported and the
board's environment and ``PkvmQEMUDriver`` are made (``envs/<board>.yaml``): 0.25 s of
Python after the process started, one thread at a time under the GIL, 0.17 s of it
labgrid's import (about 250 attrs classes).  QEMU then spends 0.15-0.25 s of its own
initialising the machine before the guest runs.  The two sat one after the other on the
path of every run, and on an emulated board that path is the floor plus the harness's
overhead (issue 14: the boot suite's goal is 1.2x of the raw QEMU boot).

So ``pkvmlab run`` (``EarlyBoard.start``) starts QEMU first, from the command line
the driver built the last time the same invocation ran (``adopt`` keeps it under
the image cache, keyed by the run's arguments, the driver's temp dir written as
``TEMPDIR``), with ``-S``: QEMU initialises, then waits for ``cont``, and the guest
runs nothing.  labgrid is imported meanwhile, on the other core.  When the driver
activates it builds its command line exactly as always and calls ``adopt``: only
if that command is the same, word for word, and every file it names is the file
that was there when this QEMU was started (device, inode, size, mtime, ctime), the
driver takes this QEMU over (its temp dir, console socket, process and stderr) and
its ``on()`` sends ``cont``.  Anything else (no record yet, another board or mode,
an image provisioned again, a changed environment file, a QEMU that died) stops
the early QEMU and the driver starts its own, as before: a wrong guess costs one
paused QEMU's start-up on the idle core.

What is checked is what makes the guest what it is: the whole argv (binary, machine,
CPU, memory, kernel, initramfs, kernel command line, every option) and the files it
names, which were hashed by this run's provisioning check before the guest runs.
QEMU's environment differs only in the ``LG_PKVMLAB_*`` variables, which are set
for labgrid's environment file after the spawn and which QEMU does not read.
"""

import atexit
import hashlib
import json
import os
import socket
import subprocess
import tempfile

from .childproc import die_with_parent, mark_owned

TEMPDIR = "{labgrid-qemu-tmp}"      # the driver's temp dir, in a remembered command line
_state = {"key": None, "early": None}


class EarlyQEMU:
    """A QEMU started paused before labgrid was imported, with its temp dir and listening console socket."""

    def __init__(self, command, tempdir, sock, child, stderr, files):
        self.command, self.tempdir, self.socket = command, tempdir, sock
        self.child, self.stderr, self.files = child, stderr, files

    def stop(self):
        """Kill it (paused: nothing to flush) and remove its temp dir."""
        if self.child.poll() is None:
            self.child.kill()
        self.child.wait()
        self.socket.close()
        self.stderr.close()
        _remove(self.tempdir)


def key_of(**arguments):
    """The record's key: the run's arguments that can change QEMU's command line (a guess: ``adopt`` checks)."""
    text = json.dumps(arguments, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _record_path(key):
    from .images.cache import default_cache_dir
    return default_cache_dir() / "qemu-commands" / f"{key}.json"


def _files_named(command):
    """The regular files ``command`` names, also inside ``-drive file=...,`` style words.

    A relative path is identified as it resolves here: run from another directory, the same
    word names another file, whose identity differs, so nothing is started early.
    """
    paths = []
    for word in command:
        for piece in word.replace("=", ",").split(","):
            if piece and TEMPDIR not in piece and piece not in paths and os.path.isfile(piece):
                paths.append(piece)
    return paths


def _identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _unchanged(files):
    return all(_identity(path) == identity for path, identity in files.items())


def start(key):
    """Start QEMU paused from the record of ``key``, if there is one whose files are unchanged.

    Called once per process, before labgrid is imported; the driver's activation then
    ``adopt``s it or stops it, and ``discard`` stops it if no driver activated.  Returns
    the EarlyQEMU or None.  Never raises: a guess that cannot be made is not made.
    """
    _state["key"] = key
    try:
        record = json.loads(_record_path(key).read_text())
        template, files = [str(word) for word in record["command"]], dict(record["files"])
        if not template or not _unchanged(files):
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None             # no record yet, or not one this version wrote
    tempdir = None
    try:
        tempdir = tempfile.mkdtemp(prefix="labgrid-qemu-tmp-")
        mark_owned(tempdir)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"{tempdir}/serialrw")
        sock.listen(0)
        command = [word.replace(TEMPDIR, tempdir) for word in template]
        stderr = tempfile.TemporaryFile()
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                 preexec_fn=die_with_parent())
    except OSError:
        if tempdir is not None:
            _remove(tempdir)
        return None
    _state["early"] = EarlyQEMU(command, tempdir, sock, child, stderr, files)
    atexit.register(discard)
    return _state["early"]


def adopt(command, tempdir):
    """The driver's QEMU command line (made in ``tempdir``): the EarlyQEMU to use instead, or None.

    Remembers ``command`` for the next run of the same key.  An early QEMU that is not
    the same is stopped here.
    """
    key, early = _state["key"], _state["early"]
    _state["early"] = None
    if key is None:
        return None
    template = [word.replace(tempdir, TEMPDIR) for word in command]
    if early is not None:
        same = ([word.replace(early.tempdir, TEMPDIR) for word in early.command] == template
                and _unchanged(early.files) and early.child.poll() is None)
        if not same:
            early.stop()
            early = None
    _remember(key, template)
    return early


def _remember(key, template):
    path = _record_path(key)
    record = {"command": template, "files": {p: _identity(p) for p in _files_named(template)}}
    try:
        if path.is_file() and json.loads(path.read_text()) == record:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}")
        scratch.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(scratch, path)
    except (OSError, ValueError):
        pass       # the next run only starts its QEMU later


def discard():
    """Stop the early QEMU no driver took (the run stopped before its board's driver activated)."""
    early, _state["early"] = _state["early"], None
    if early is not None:
        early.stop()


def _remove(tempdir):
    import shutil
    shutil.rmtree(tempdir, ignore_errors=True)
