"""PkvmSerialDriver: labgrid's SerialDriver, reading what a raw TCP console has instead of one byte.

Why ours: over a ``NetworkSerialPort`` with ``protocol: raw`` labgrid's
``SerialDriver`` uses pyserial's ``socket://`` port, whose ``in_waiting`` only
polls the socket and says 0 or 1, and labgrid's pexpect asks for one byte per
read (``PtxExpect``, ``maxread=1``), so a boot log arrives one byte per expect
round (a select, a log call and a regex search over the buffer each).  On the
QEMU bench board that is slower than the guest writes, and QEMU's PL011 stalls
the guest while its socket buffer is full: measured on qemu-uboot, ``booti`` to
the shell prompt took 6.9 s through labgrid's driver, against about 2.6 s in the
raw floor (bench/boot_ratio.py --board qemu-uboot).  A serial server in front
of a physical board does not stall its UART, but the harness still spends that
CPU.  This driver reads everything the socket holds (up to 64 KiB) through the
port's public ``fileno()``; RFC 2217 and local ports keep labgrid's own read.

Two more costs of a raw TCP console, measured on qemu-uboot (bench/boot_ratio.py):

* Every command round trip took at least 43 ms: pexpect writes a command and
  its line end as two small writes, and Nagle's algorithm holds the second
  until the first is acknowledged, which the peer delays by up to 40 ms (TCP
  delayed ACK).  The socket gets ``TCP_NODELAY`` (tcp(7)): 0.044 -> 0.003 s a
  round trip, over the 15-20 round trips of a U-Boot boot and the suites.
* pyserial's ``socket://`` ``close()`` sleeps 0.3 s "in case of quick
  reconnects" (``serial/urlhandler/protocol_socket.py``), after every run.
  Nothing reconnects at once here (a power cycle comes first), so the
  connection is shut down and closed without it.  pyserial has no public way to
  skip the sleep: this reaches into its ``_socket``, and falls back to its
  ``close()`` should that name change.
* A console that trickles costs a read per byte or two: U-Boot prints one
  ``#`` per 10 TFTP blocks, about 3,800 of them over the 1.2 s a 51 MB kernel
  takes, and every read is a labgrid step (event, step log, a regex search of
  pexpect's buffer): 1,550 reads and about 0.4 s of the harness's CPU while
  QEMU's TFTP server and U-Boot keep both cores busy, so the transfer itself
  took 0.2-0.3 s longer than in the raw floor.  After STREAK reads in a row
  that came less than TRICKLE apart, a read waits GATHER first and takes what
  came meanwhile.  A command's round trip is a few reads, never such a streak,
  so it keeps its latency.  Measured, qemu-uboot boot suite, 6 alternated runs
  each: 5.93 s -> 5.68 s (raw floor 4.86 s).
"""

import os
import select
import socket
import time

import attr
from labgrid.driver.serialdriver import SerialDriver
from labgrid.factory import target_factory
from labgrid.resource import NetworkSerialPort
from pexpect import TIMEOUT

# A console that trickles is read in gulps (see the module docstring): after STREAK reads in a row
# each less than TRICKLE seconds after the last, a read first waits GATHER seconds.
TRICKLE = 0.002
STREAK = 8
GATHER = 0.005


@target_factory.reg_driver
@attr.s(eq=False)
class PkvmSerialDriver(SerialDriver):
    _streak = 0
    _last_read = 0.0

    def _raw_socket(self):
        return isinstance(self.port, NetworkSerialPort) and self.port.protocol == "raw"

    def open(self):
        was_open = self.status
        super().open()
        if self._raw_socket() and not was_open:
            with socket.socket(fileno=os.dup(self.serial.fileno())) as sock:   # the same TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self):
        sock = getattr(self.serial, "_socket", None)
        if not (self.status and self._raw_socket() and isinstance(sock, socket.socket)):
            super().close()
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass        # the peer closed it first
        sock.close()
        self.serial._socket = None
        self.serial.is_open = False
        self.status = 0

    def _read(self, size=1, timeout=0.0, max_size=None):
        if not self._raw_socket():
            return super()._read(size=size, timeout=timeout, max_size=max_size)
        fd = self.serial.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TIMEOUT(f"Timeout of {timeout:.2f} seconds exceeded")
        if self._streak >= STREAK:
            time.sleep(GATHER)       # a trickle (U-Boot's TFTP progress marks): take more of it at once
        data = os.read(fd, min(max_size, 65536) if max_size else 65536)
        now = time.monotonic()
        self._streak = self._streak + 1 if now - self._last_read < TRICKLE else 0
        self._last_read = now
        if not data:      # as labgrid's driver says it: the peer closed the connection
            raise TIMEOUT(f"Timeout of {timeout:.2f} seconds exceeded or connection closed by peer")
        return data
