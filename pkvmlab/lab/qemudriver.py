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
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import attr
from labgrid.driver.qemudriver import QEMUDriver
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.util.qmp import QMPError, QMPMonitor
from pexpect import EOF, TIMEOUT

from ..errors import InfrastructureError
from .childproc import die_with_parent, mark_owned, stop, sweep_stale

CONSOLE_BUFFER = 1 << 20    # bytes read ahead of the harness; a boot prints about 40 KB


@target_factory.reg_driver
@attr.s(eq=False)
class PkvmQEMUDriver(QEMUDriver):
    initrd = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))
    start_timeout = attr.ib(default=15.0, converter=float)

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
        atexit.register(shutil.rmtree, self._tempdir, ignore_errors=True)

    def on_deactivate(self):
        try:
            super().on_deactivate()
        except FileNotFoundError:
            pass    # the atexit fallback above removed the temp dir first (exit after an interrupt)

    @step()
    def on(self):
        """Start QEMU paused, connect console and QMP within start_timeout, then let it run."""
        if self.status:
            return
        self.logger.debug("Starting with: %s", self._cmd)
        self._stderr = tempfile.TemporaryFile()
        self._child = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=self._stderr, preexec_fn=die_with_parent())
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready, _, _ = select.select([self._socket], [], [], 0.05)
            if ready:
                self._clientsocket, _ = self._socket.accept()
                self._start_pump()
                break
            if self._child.poll() is not None:
                self._fail_start(f"QEMU exited at start (code {self._child.returncode})")
            if time.monotonic() > deadline:
                self._child.kill()
                self._child.wait()
                self._fail_start(f"QEMU did not open its console within {self.start_timeout:.0f} s")
        try:
            self.qmp = QMPMonitor(self._child.stdout, self._child.stdin)
        except QMPError:
            self._child.kill()
            self._child.wait()
            self._fail_start("QEMU's QMP monitor did not answer")
        self.status = 1
        self.monitor_command("cont")

    def _fail_start(self, what):
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace").strip()
        self._child = None
        first = err.splitlines()[0] if err else "(nothing on stderr)"
        raise InfrastructureError(f"{what}: {first}\n{err}\ncommand: {' '.join(self._cmd)}")

    @step()
    def off(self):
        """Stop QEMU; also when it already died (killed, crashed), without hanging.

        The console socket is closed first: a QEMU whose console nobody reads
        (the harness was interrupted mid-boot) blocks in its write to the socket
        while holding its main loop, and then answers neither QMP's ``quit``
        (labgrid's QMP client waits for that answer with no timeout: measured,
        forever) nor SIGTERM (measured: 5 s, then SIGKILL).  With the socket
        closed, SIGTERM ends it at once ("terminating on signal 15").
        """
        if not self.status:
            return
        child, self._child, self.status = self._child, None, 0
        self._close_console()
        stop(child)

    def _close_console(self):
        """Close the console socket; ``shutdown`` first, so that the pump thread's ``recv`` returns."""
        sock, self._clientsocket = self._clientsocket, None
        if sock is None:
            return
        with self._arrived:
            self._closing = True
            self._arrived.notify_all()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass      # QEMU closed it already
        sock.close()
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(5)

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

    def _start_pump(self):
        """Read the console socket in a thread of its own, into ``self._received`` (see the module docstring)."""
        self._received = bytearray()
        self._console_end = None          # why the console ended (an EOF message), once it has
        self._closing = False
        self._arrived = threading.Condition()
        sock = self._clientsocket

        def pump():
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
        self._pump = threading.Thread(target=pump, name="pkvmlab-qemu-console", daemon=True)
        self._pump.start()

    def _read(self, size=1, timeout=10, max_size=None):
        if self._clientsocket is None:
            raise EOF("QEMU is not running")
        with self._arrived:
            if not self._received and self._console_end is None:
                self._arrived.wait(timeout)
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
        try:
            return self._clientsocket.send(data)
        except (OSError, AttributeError) as err:
            raise EOF(f"QEMU console is gone: {err}") from None
