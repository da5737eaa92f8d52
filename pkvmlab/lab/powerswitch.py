"""QEMUPowerSwitch: a network power switch (labgrid's ``simplerest`` protocol) that powers a QEMU board.

Why ours: labgrid drives bench boards through a PDU (``NetworkPowerDriver``)
and a serial server (``NetworkSerialPort``), but its only QEMU path
(``QEMUDriver``) owns the console and the power itself, so a QEMU board driven
that way is not wired like a bench board.  This driver plays the PDU: an HTTP
server bound to 127.0.0.1 that answers ``GET /relay/<index>/<1|0>`` by starting
or stopping QEMU and ``GET /relay/<index>`` with ``1``/``0``, so the env file
holds a ``NetworkPowerPort`` (model ``simplerest``) exactly as for a real PDU.

"Power on" returns only once QEMU listens on its serial port (``-serial
tcp:...,server=on,wait=on``: the guest starts when the console connects, so no
firmware output is lost), or fails with QEMU's own error as the HTTP reason
(labgrid's ``raise_for_status`` puts it in one line).  QEMU gets
``PR_SET_PDEATHSIG``/SIGKILL (``childproc.die_with_parent``) so it never outlives
the harness, also after a SIGKILL; it is started by the server's one long-lived
thread, which the kernel's death signal is tied to, and which ends only after
deactivating the driver has stopped QEMU.

Ports ``0`` mean "any free loopback port, picked for this run": two runs of the
same QEMU bench board at once (two users, a matrix, the project's tests) must
not meet on fixed ports.  labgrid's ``NetworkSerialPort.port`` must be an int,
so an env ``!template`` (a string) cannot carry a per-run port; instead, when
the target is created, the switch picks the ports and writes them into the
target's ``NetworkSerialPort`` (host 127.0.0.1, port 0) and ``NetworkPowerPort``
(URL with port 0) before any driver uses them.  A physical board's env names
its real serial server and PDU and has no such driver.

Config:
    port (int): TCP port of the switch on 127.0.0.1 (0: a free port per run)
    qemu_bin (str): key under ``tools:``
    serial_port (int): the TCP port QEMU serves its serial console on (0: a free port per run)
    qemu_args (str): the rest of QEMU's command line (machine, cpu, memory, -bios ...)
    bios (str): key under ``images:`` given as ``-bios``
    kernel, initrd (str): keys under ``images:`` for a direct (EFI stub) boot, optional
    boot_args (str): ``-append`` for a direct boot
    start_timeout (float): seconds for QEMU to listen on its serial port
"""

import http.server
import re
import shlex
import socket
import subprocess
import threading
import time

import attr
from labgrid.driver.common import Driver
from labgrid.factory import target_factory
from labgrid.resource import NetworkPowerPort, NetworkSerialPort
from labgrid.step import step

from ..childproc import die_with_parent, stop
from ..errors import InfrastructureError


def listening(port):
    """Whether something listens on 127.0.0.1:``port`` (read from /proc: connecting would be QEMU's client)."""
    want = f":{port:04X} "
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as file:
                for line in file:
                    fields = line.split()
                    if len(fields) > 3 and (fields[1] + " ").endswith(want) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            continue
    return False


def free_port():
    """A TCP port nothing listens on at 127.0.0.1 now (the kernel's pick for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PowerError(InfrastructureError):
    """The power switch (or the QEMU it starts) failed: the lab's fault, never the board's."""


@target_factory.reg_driver
@attr.s(eq=False)
class QEMUPowerSwitchDriver(Driver):
    bindings = {"tftp": {"TFTPProvider", None}}

    port = attr.ib(converter=int)
    qemu_bin = attr.ib(validator=attr.validators.instance_of(str))
    serial_port = attr.ib(converter=int)
    qemu_args = attr.ib(default="", validator=attr.validators.instance_of(str))
    bios = attr.ib(default=None)
    kernel = attr.ib(default=None)
    initrd = attr.ib(default=None)
    boot_args = attr.ib(default="", validator=attr.validators.instance_of(str))
    start_timeout = attr.ib(default=20.0, converter=float)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self._pick_ports()
        self._process = None
        self._server = None
        self._stderr = None
        self._lock = threading.Lock()

    def _pick_ports(self):
        """Ports given as 0 become free loopback ports, written into the serial and power resources."""
        if self.serial_port == 0:
            self.serial_port = free_port()
            for resource in self.target.resources:
                if isinstance(resource, NetworkSerialPort) and resource.host in ("127.0.0.1", "localhost") \
                        and resource.port == 0:
                    resource.port = self.serial_port
        if self.port == 0:
            self.port = free_port()
            for resource in self.target.resources:
                if isinstance(resource, NetworkPowerPort) and re.search(r"//(127\.0\.0\.1|localhost):0/",
                                                                             resource.host):
                    resource.host = re.sub(r":0/", f":{self.port}/", resource.host, count=1)

    def on_activate(self):
        driver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "relay" and parts[2] in ("0", "1"):
                    try:
                        driver.power(parts[2] == "1")
                    except PowerError as error:
                        self.send_response(500, " ".join(str(error).split())[:400])
                        self.end_headers()
                        return
                    body = parts[2]
                elif len(parts) == 2 and parts[0] == "relay":
                    body = "1" if driver.is_on() else "0"
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):   # the step log says what happened
                pass

        try:
            # One thread serves every request: PR_SET_PDEATHSIG fires when the *thread* that started
            # QEMU ends, so QEMU must be started by the server's long-lived thread, not a per-request one.
            self._server = http.server.HTTPServer(("127.0.0.1", self.port), Handler)
        except OSError as error:
            raise PowerError(f"power switch cannot listen on 127.0.0.1:{self.port}: {error.strerror}") from None
        # serve_forever notices shutdown() once per poll interval: 0.5 s by default, which every run's end
        # waited for (measured); 50 ms costs a wake-up 20 times a second while the board runs.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="qemu-power-switch", daemon=True).start()

    def on_deactivate(self):
        self.power(False)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def is_on(self):
        return self._process is not None and self._process.poll() is None

    def command(self):
        """QEMU's command line, built from the env file's keys."""
        path = self.target.env.config.get_tool(self.qemu_bin)
        cmd = [path, *shlex.split(self.qemu_args), "-nographic", "-monitor", "none",
               "-serial", f"tcp:127.0.0.1:{self.serial_port},server=on,wait=on,nodelay=on"]
        images = self.target.env.config.get_image_path
        if self.bios:
            cmd += ["-bios", images(self.bios)]
        if self.kernel:
            cmd += ["-kernel", images(self.kernel)]
        if self.initrd:
            cmd += ["-initrd", images(self.initrd)]
        if self.boot_args:
            cmd += ["-append", self.boot_args]
        if self.tftp is not None:
            cmd += ["-netdev", f"user,id=n0,tftp={self.tftp.internal}",
                    "-device", "virtio-net-pci,netdev=n0,romfile="]
        return cmd

    @step(args=["on"])
    def power(self, on):
        with self._lock:
            if on:
                self._start()
            else:
                self._stop()

    def _start(self):
        if self.is_on():
            return
        if listening(self.serial_port):
            raise PowerError(f"serial port 127.0.0.1:{self.serial_port} is already taken by another process")
        cmd = self.command()
        self.logger.info("power on: %s", shlex.join(cmd))
        self._process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, preexec_fn=die_with_parent())
        deadline = time.monotonic() + self.start_timeout
        while not listening(self.serial_port):
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode(errors="replace").strip()
                self._process = None
                raise PowerError(f"QEMU exited at power-on: {error or 'no message'}")
            if time.monotonic() > deadline:
                self._stop()
                raise PowerError(f"QEMU did not open its serial port {self.serial_port} "
                                 f"within {self.start_timeout:.0f} s")
            time.sleep(0.02)

    def _stop(self):
        process, self._process = self._process, None
        if process is None:
            return
        stop(process)
        process.stderr.close()
