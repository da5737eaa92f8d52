"""PkvmQEMUDriver: labgrid's QEMUDriver, with an initrd, bounded start-up and an unthrottled console.

Three measured problems of the upstream driver (labgrid 26.0.1) are fixed here
rather than worked around in every caller:

* it has no ``initrd`` key (``-initrd`` would have to hide in ``extra_args``);
* ``on()`` waits for QEMU's serial socket with no deadline, so a QEMU that
  exits at start (bad option, missing file) hangs the run forever, and QEMU's
  own error message is lost;
* ``_read()`` sleeps 10 ms before every read; QEMU's PL011 stalls the guest
  while its ~250-byte socket buffer is full, so that sleep slows the guest's
  boot itself (2.0-2.4 s to a prompt instead of 1.6-2.0 s).  Here a thread
  reads the console socket from the moment QEMU connects, into a buffer that
  ``_read()`` serves: the guest never waits for the harness, also while the
  harness is busy elsewhere (collecting tests while the board boots, writing a
  report).  Measured: a board powered on before pytest's collection booted
  0.3 s slower when nobody read its console during the collection.  The buffer
  holds at most CONSOLE_BUFFER bytes: a guest that floods its console while
  nobody reads (a test sleeping for minutes) is held up by QEMU as before,
  instead of filling the harness's memory.  Bytes the thread has read but
  nobody has consumed yet are the only ones a SIGKILL of the harness can lose
  from the console log;
* ``on()`` waits for QEMU's start-up (its console connection, the QMP
  greeting and capabilities, ``cont``): about 0.25 s of QEMU initialising
  itself on one core while the harness waits on the other.  Here ``on()``
  starts QEMU and returns; the console thread finishes the start-up (accept,
  QMP, ``cont``) and then reads the console, while the harness goes on (pytest's
  start-up, 0.3 s of CPU, runs beside QEMU's).  A start-up that fails (QEMU
  exits, never connects, QMP never answers) is kept, and the next console read
  or monitor command raises it with QEMU's own stderr: the first cause, as
  before, one read later.  Measured on the 2-core CI machine, ``pkvmlab run``
  of the boot suite, 5 runs alternated with the raw QEMU boot: 4.03 s -> 3.71 s
  (QEMU's ``cont`` still comes 0.42-0.44 s after the process started: the
  harness no longer waits for it);
* ``on_activate`` asks ``pkvmlab/qemuprestart.py`` whether ``pkvmlab run`` already
  started this very command line, paused, before labgrid was imported; if so, the
  driver takes that QEMU (process, temp dir, console socket) instead of starting one;
* nothing ties QEMU's life to the harness: its only cleanup is an ``atexit``
  handler and ``on_deactivate``, which a SIGKILL (or OOM kill, or interpreter
  crash) never runs, so QEMU went on under PID 1 and its temp dir
  (``$TMPDIR/labgrid-qemu-tmp-*``, QEMU's console socket) stayed.  Here QEMU is
  started with ``PR_SET_PDEATHSIG``/SIGKILL (``childproc.die_with_parent``; ``on()``
  runs in pytest's main thread, which lives as long as the harness), the temp
  dir gets an owner file, and every activation removes the temp dirs of dead
  owners (``childproc.sweep_stale``).  Normal exit and SIGTERM/SIGINT/SIGHUP
  (the plugin's handler) remove it through ``on_deactivate`` as before, with an
  ``atexit`` fallback.

Config, on top of QEMUDriver's:
    initrd (str): optional, key under ``images:`` for the initramfs
    start_timeout (float): seconds QEMU may take to open its console and QMP socket (default 15)
"""

import atexit
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import attr
from labgrid.driver.exception import ExecutionError
from labgrid.driver.qemudriver import QEMUDriver
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.util.qmp import QMPError, QMPMonitor
from pexpect import EOF, TIMEOUT

from .. import qemuprestart
from ..childproc import die_with_parent, mark_owned, stop, sweep_stale
from ..errors import InfrastructureError

CONSOLE_BUFFER = 1 << 20    # bytes read ahead of the harness; a boot prints about 40 KB


@target_factory.reg_driver
@attr.s(eq=False)
class PkvmQEMUDriver(QEMUDriver):
    initrd = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    start_timeout = attr.ib(default=15.0, converter=float)
    _early = attr.ib(default=None, init=False, repr=False)    # a QEMU `pkvmlab run` started (qemuprestart)

    def get_qemu_base_args(self):
        binary = self.target.env.config.get_tool(self.qemu_bin)
        if not shutil.which(binary):
            raise InfrastructureError(
                f"QEMU binary '{binary}' (tools.{self.qemu_bin} in {self.target.env.config_file}) not found; "
                "install it with: sudo apt-get install -y qemu-system-arm")
        cmd = super().get_qemu_base_args()
        if self.initrd is not None:
            cmd[1:1] = ["-initrd", self.target.env.config.get_image_path(self.initrd)]
        return cmd

    def on_activate(self):
        sweep_stale("labgrid-qemu-tmp-*")    # left by harnesses that were SIGKILLed
        super().on_activate()
        mark_owned(self._tempdir)
        # `pkvmlab run` may have started this very command already, paused (pkvmlab/qemuprestart.py)
        self._early = qemuprestart.adopt(self._cmd, self._tempdir)
        if self._early is not None:
            self._socket.close()
            shutil.rmtree(self._tempdir)
            self._tempdir, self._socket, self._cmd = self._early.tempdir, self._early.socket, self._early.command
        atexit.register(shutil.rmtree, self._tempdir, ignore_errors=True)

    def on_deactivate(self):
        early, self._early = self._early, None
        if early is not None:      # adopted but never switched on
            stop(early.child)
        try:
            super().on_deactivate()
        except FileNotFoundError:
            pass    # the atexit fallback above removed the temp dir first (exit after an interrupt)

    def get_qemu_version(self, qemu_bin):
        """(major, minor, micro) from pkvmlab's remembered ``--version`` probe: no subprocess per run."""
        from ..images.emulator import query_version
        try:
            version, _ = query_version(qemu_bin)
        except InfrastructureError:
            return super().get_qemu_version(qemu_bin)
        parts = [int(p) for p in re.findall(r"\d+", version)[:3]]
        return tuple(parts + [0] * (3 - len(parts)))

    @step()
    def on(self):
        """Start QEMU paused and return; the console thread connects console and QMP and lets it run.

        Until then ``status`` is 1 (QEMU's process runs): ``off()`` stops it, the console
        reads wait for it, and a failed start-up is raised by the first read (``_read``) or
        monitor command (see the module docstring).
        """
        if self.status:
            return
        early, self._early = self._early, None
        if early is not None:
            self.logger.info("QEMU pid %d, started early from this same command line (pkvmlab/qemuprestart.py): %s",
                             early.child.pid, " ".join(self._cmd))
            self._child, self._stderr = early.child, early.stderr
        else:
            self.logger.debug("Starting with: %s", self._cmd)
            self._stderr = tempfile.TemporaryFile()
            self._child = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                           stderr=self._stderr, preexec_fn=die_with_parent())
        self.status = 1
        self._start_console_thread()

    def _start_up(self, child):
        """In the console thread: QEMU's console connection, QMP and ``cont``; returns the console socket."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready, _, _ = select.select([self._socket], [], [], 0.05)
            if self._closing:
                return None
            if ready:
                sock, _ = self._socket.accept()
                break
            if child.poll() is not None:
                raise self._start_failure(f"QEMU exited at start (code {child.returncode})")
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise self._start_failure(f"QEMU did not open its console within {self.start_timeout:.0f} s")
        self._clientsocket = sock
        try:
            self.qmp = QMPMonitor(child.stdout, child.stdin)
            self.qmp.execute("cont")
        except (QMPError, OSError, ValueError) as err:
            if self._closing:
                return None
            child.kill()
            child.wait()
            raise self._start_failure(f"QEMU's QMP monitor did not answer ({err})") from None
        return sock

    def _start_failure(self, what):
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        first = err.splitlines()[0] if err else "(nothing on stderr)"
        return InfrastructureError(f"{what}: {first}\n{err}\ncommand: {' '.join(self._cmd)}")

    def _wait_started(self):
        """Block until the start-up is over; raise its failure, if it failed."""
        with self._arrived:
            while not self._started and self._start_error is None and not self._closing:
                self._arrived.wait()
            if self._start_error is not None:
                raise self._start_error

    @step(result=True, args=["command", "arguments"])
    def monitor_command(self, command, arguments={}):  # noqa: B006 - labgrid's signature
        """QMP ``command``, once the console thread has connected QMP (see ``on``)."""
        if not self.status:
            raise ExecutionError("Can't use monitor command on non-running target")
        self._wait_started()
        return self.qmp.execute(command, arguments)

    @step()
    def off(self):
        """Stop QEMU; also when it already died (killed, crashed) or is still starting, without hanging.

        The console socket is closed first: a QEMU whose console nobody reads
        (the harness was interrupted mid-boot) blocks in its write to the socket
        while holding its main loop, and then answers neither QMP's ``quit``
        (labgrid's QMP client waits for that answer with no timeout: measured,
        forever) nor SIGTERM (measured: 5 s, then SIGKILL).  With the socket
        closed, SIGTERM ends it at once ("terminating on signal 15").  The
        console thread ends once QEMU has: it may be waiting for QMP's answer.
        """
        if not self.status:
            return
        child, self._child, self.status = self._child, None, 0
        self._close_console()
        stop(child)
        thread = getattr(self, "_console_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _close_console(self):
        """Tell the console thread to stop and close the socket (``shutdown`` first: its ``recv`` returns)."""
        arrived = getattr(self, "_arrived", None)
        if arrived is None:
            return
        with arrived:
            self._closing = True
            sock, self._clientsocket = self._clientsocket, None
            arrived.notify_all()
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass      # QEMU closed it already
        sock.close()

    def exit_status(self, wait=0.0):
        """QEMU's exit code, or None while it runs (or was never started).

        ``wait``: seconds to give a QEMU whose console just closed to finish exiting
        (the socket closes a few milliseconds before the process is gone).
        """
        if not self._child:
            return None
        try:
            return self._child.wait(timeout=wait) if wait else self._child.poll()
        except subprocess.TimeoutExpired:
            return None

    def _start_console_thread(self):
        """Finish QEMU's start-up, then read its console into ``self._received`` (see the module docstring)."""
        self._received = bytearray()
        self._console_end = None          # why the console ended (an EOF message), once it has
        self._closing = False
        self._started = False
        self._start_error = None
        self._arrived = threading.Condition()
        child = self._child

        def console():
            try:
                sock = self._start_up(child)
            except InfrastructureError as err:
                with self._arrived:
                    self._start_error = err
                    self._console_end = str(err).splitlines()[0]
                    self._arrived.notify_all()
                return
            with self._arrived:
                if sock is None or self._closing:       # off() came first
                    self._console_end = "QEMU was switched off"
                    self._arrived.notify_all()
                    closed = sock
                else:
                    self._started, closed = True, None
                    self._arrived.notify_all()
            if closed is not None:
                closed.close()
                return
            self._pump(sock)
        self._console_thread = threading.Thread(target=console, name="pkvmlab-qemu-console", daemon=True)
        self._console_thread.start()

    def _pump(self, sock):
        while True:
            with self._arrived:       # read ahead at most CONSOLE_BUFFER bytes
                while len(self._received) >= CONSOLE_BUFFER and not self._closing:
                    self._arrived.wait()
                if self._closing:
                    return
            try:
                data = sock.recv(65536)
                end = None if data else "QEMU closed its console"
            except OSError as err:    # closed by off(), or the socket failed
                data, end = b"", f"QEMU console socket failed: {err}"
            with self._arrived:
                if data:
                    self._received += data
                else:
                    self._console_end = end
                self._arrived.notify_all()
            if not data:
                return

    def _read(self, size=1, timeout=10, max_size=None):
        if not self.status or getattr(self, "_arrived", None) is None:
            raise EOF("QEMU is not running")
        with self._arrived:
            deadline = time.monotonic() + timeout
            while not self._received and self._console_end is None and self._start_error is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrived.wait(left):
                    break
            if self._start_error is not None:
                raise self._start_error
            if self._received:
                take = min(max_size, 65536) if max_size else 65536
                data = bytes(self._received[:take])
                del self._received[:take]
                self._arrived.notify_all()    # room again, should the pump be waiting for it
                return data
            if self._console_end is None:
                raise TIMEOUT(f"Timeout of {timeout:.2f} seconds exceeded")
            end = self._console_end
        if end == "QEMU closed its console":
            code = self._child.poll() if self._child else None
            raise EOF(f"{end} (exit code {code})")
        raise EOF(end)

    def _write(self, data):
        if self.status:
            self._wait_started()
        try:
            return self._clientsocket.send(data)
        except (OSError, AttributeError) as err:
            raise EOF(f"QEMU console is gone: {err}") from None
