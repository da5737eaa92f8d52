"""SerialFastbootDriver: labgrid's AndroidFastbootDriver, addressed by the device's serial number.

labgrid's driver names a USB device by its bus path (``-s usb:1-1.2``, from a
udev match) or a network one by ``udp:host:port``.  A phone is known by its
serial, the same one adb uses, so this subclass binds to
:class:`~pkvmlab.lab.androidresource.AndroidDevice` and passes ``-s SERIAL``;
``boot``, ``flash``, ``getvar`` and the rest are labgrid's own code.  What it
adds: activation refuses a missing or ambiguous serial (``fastboot devices``),
a fastboot that starts "< waiting for SERIAL >" (the device is gone; the real
tool would wait forever) is stopped at once, and failures become
:class:`~pkvmlab.errors.DeviceError` carrying fastboot's own words.

Config: as AndroidFastbootDriver (``sparse_size``; ``boot_image``/``flash_images`` unused by pkvmlab).
"""

import subprocess
import time
from contextlib import contextmanager

import attr
from labgrid.driver.common import Driver
from labgrid.driver.fastbootdriver import AndroidFastbootDriver
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.util.helper import processwrapper

from ..errors import DeviceError
from .androidresource import check_serial, describe


def parse_fastboot_devices(text):
    """[(serial, mode)] from ``fastboot devices``."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("<"):
            found.append((parts[0], parts[1]))
    return found


@target_factory.reg_driver
@attr.s(eq=False)
class SerialFastbootDriver(AndroidFastbootDriver):
    bindings = {"fastboot": "AndroidDevice"}

    poll_interval = attr.ib(default=1.0, converter=float)

    def _get_fastboot_prefix(self):
        prefix = self.fastboot.command_prefix + [self.tool, "-s", self.fastboot.fastboot_id]
        if self.sparse_size is not None:
            prefix += ["-S", self.sparse_size]
        return prefix

    @property
    def serial(self):
        return self.fastboot.fastboot_id

    def _config_file(self):
        env = self.target.env
        return getattr(env, "config_file", None) if env else None

    def on_activate(self):
        if not self.present():
            raise DeviceError(f"{self.serial} is not in fastboot mode (fastboot devices: "
                              f"{describe(self.devices())})")

    def devices(self):
        """``fastboot devices`` as [(serial, mode)] (a listing: no -s)."""
        try:
            output = processwrapper.check_output(self.fastboot.command_prefix + [self.tool, "devices"])
        except FileNotFoundError:
            raise DeviceError(f"fastboot not found ({self.tool}): install Android platform-tools or set "
                              "tools: fastboot in the environment") from None
        except subprocess.CalledProcessError as err:
            raise DeviceError(f"fastboot devices failed (exit {err.returncode}): {err.output!r}") from None
        return parse_fastboot_devices(output.decode(errors="replace"))

    def present(self):
        return check_serial(self.fastboot, self.devices(), "fastboot", self._config_file()) == 1

    def wait_for_device(self, timeout):
        deadline = time.monotonic() + timeout
        while not self.present():
            if time.monotonic() >= deadline:
                raise DeviceError(f"{self.serial} did not show up in fastboot mode within {timeout:.0f} s "
                                  f"(fastboot devices: {describe(self.devices())})")
            time.sleep(self.poll_interval)

    @contextmanager
    def _device_calls(self, what):
        """Stop a fastboot that waits for an absent device; turn failures into DeviceError."""
        gone = []

        def watch(chunk, process):
            if b"< waiting for" in chunk:
                gone.append(chunk.decode(errors="replace").strip())
                process.kill()

        processwrapper.register(watch)
        try:
            yield
        except subprocess.CalledProcessError as err:
            output = (err.output or b"").decode(errors="replace").replace("\r", "").strip()
            if gone:
                raise DeviceError(f"{self.serial} is not reachable by fastboot ({gone[0]}) during {what}") from None
            if "No such device" in output or "no link" in output.lower():
                raise DeviceError(f"{self.serial} dropped off USB during {what}: {output}") from None
            raise DeviceError(f"fastboot {what} on {self.serial} failed (exit {err.returncode}): {output}") from None
        finally:
            processwrapper.unregister(watch)

    @Driver.check_active
    @step(title="call", args=["args"])
    def __call__(self, *args):
        with self._device_calls(" ".join(str(a) for a in args)):
            processwrapper.check_output(self._get_fastboot_prefix() + list(args))

    @Driver.check_active
    @step(args=["var"])
    def getvar(self, var):
        with self._device_calls(f"getvar {var}"):
            output = processwrapper.check_output(self._get_fastboot_prefix() + ["getvar", var])
        lines = [line.strip().removeprefix("(bootloader) ")
                 for line in output.decode(errors="replace").replace("\r", "").split("\n")]
        values = [line[len(var) + 2:] for line in lines if line.startswith(f"{var}: ")]
        if len(values) != 1:
            raise DeviceError(f"fastboot getvar {var} on {self.serial} answered {output!r}, not one '{var}: ' line")
        return values[0].strip()
