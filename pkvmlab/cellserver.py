"""The matrix's cells, forked from a warm server instead of started as new interpreters.

Why: on the 2-core machines the matrix runs on, two TCG boards keep both cores
busy, so every CPU second a cell's harness spends comes off the boards.  A cell
started as ``python -m pkvmlab.cli run`` spends about 0.5 s of CPU before its
board powers on (interpreter, pytest, labgrid and its gRPC client imported,
labgrid's attrs classes built) and 0.2 s more on the report's tools (xmlschema's
parse of ``junit-10.xsd``, Jinja2's compile of the page): measured, 0.9 s of
CPU per cell, the same in every cell.  The standard library's
``multiprocessing`` forkserver does that once: its server process imports
``pkvmlab.cellwarm`` (``set_forkserver_preload``), which imports those modules and builds those
caches (``pkvmlab/cellwarm.py``), and every cell is a fork of it that runs ``pkvmlab.cli.entry`` with the
cell's arguments.

A cell is still a process of its own (a crash in one cannot spoil another), runs
the very code ``pkvmlab run`` runs, and ends the same way (``cli.entry``:
atexit handlers, flushed logs, ``os._exit`` with the run's exit code).  Its
output goes to ``<run dir>/pytest-output.txt``.  It gets SIGTERM when the matrix
ends, however it ends (``_end_with_the_matrix``), so a cell still writes its
JUnit file and stops its QEMU when the matrix is killed.  The server is
single-threaded when it forks: its preload starts no thread, and each cell's
watcher thread starts in the cell.
"""

import multiprocessing
import os
import signal
import threading

_CONTEXT = None


def context():
    """The forkserver context whose server has the harness preloaded (``pkvmlab.cellwarm``)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["pkvmlab.cellwarm"])
    return _CONTEXT


def start_server():
    """Start the server now (it warms up while the caller provisions); later cells fork at once."""
    from multiprocessing import forkserver
    context()
    forkserver.ensure_running()


def _cell_main(argv, output, cwd, matrix_alive):
    """In the forked cell: output to ``output``, SIGTERM when the matrix ends, then ``pkvmlab <argv>``."""
    from .cli import entry
    _end_with_the_matrix(matrix_alive)
    os.chdir(cwd)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.dup2(1, 2)
    entry(argv)


def _end_with_the_matrix(matrix_alive):
    """SIGTERM to this cell once ``matrix_alive`` (a pipe whose only writer is the matrix) reads EOF.

    Not ``PR_SET_PDEATHSIG``: the cell's parent is the server, and the server lives as long as
    any process it forked (multiprocessing hands each the server's "alive" pipe), so it would
    never end first.  The pipe's write end is the matrix's alone: it closes when the matrix
    exits, however it exits (SIGKILL too).
    """
    def watch():
        try:
            matrix_alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="pkvmlab-cell-watch", daemon=True).start()


def start_cell(argv, output, cwd):
    """Fork a cell running ``pkvmlab <argv>``; returns (its ``multiprocessing.Process``, the pipe end
    that keeps it alive: close it once the cell has ended)."""
    ctx = context()
    matrix_alive, keep = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_cell_main, args=(list(argv), str(output), str(cwd), matrix_alive))
    process.start()
    matrix_alive.close()
    return process, keep
