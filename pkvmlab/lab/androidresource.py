"""AndroidDevice: a phone (or Android board) reached with adb and fastboot, named by its serial number.

The serial is what both tools are told with ``-s`` on every call, so two phones
on one host can never be confused.  A USB phone's serial is the one ``adb
devices -l`` and ``fastboot devices`` print (``ro.serialno``); a phone on the
network is ``host:port`` for adb (``fastboot_serial`` then names it for
fastboot, e.g. ``tcp:host``).  No serial is an error raised when a driver
is refused when the environment is loaded (the resource is created), before any
adb or fastboot command, never guessed from what is attached.

Config:
    serial (str): adb serial number, or ``host:port`` for adb over TCP
    fastboot_serial (str): what fastboot calls the device, if not ``serial``
"""

import attr
from labgrid.factory import target_factory
from labgrid.resource.common import Resource


def _optional_str(value):
    return None if value is None or value == "" else str(value)


@target_factory.reg_resource
@attr.s(eq=False)
class AndroidDevice(Resource):
    serial = attr.ib(default=None, converter=_optional_str)
    fastboot_serial = attr.ib(default=None, converter=_optional_str)

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        if not self.serial:
            from ..errors import ConfigError
            env = self.target.env if self.target is not None else None
            where = getattr(env, "config_file", None) or "the labgrid environment"
            raise ConfigError(where, [
                f"{where}: AndroidDevice has no serial: every adb/fastboot call names its device with -s, so "
                "the environment must give one (the serial 'adb devices -l' prints, or host:port for adb over "
                "TCP; see envs/pixel.yaml and docs/pixel.md)"])

    @property
    def fastboot_id(self):
        return self.fastboot_serial or self.serial


def describe(listing):
    return ", ".join(f"{serial} ({info})" if info else serial for serial, info in listing) or "none"


def check_serial(resource, listing, tool, config_file=None):
    """How many entries of ``listing`` [(serial, description)] are this device; refuses what is unsafe.

    Returns 0 or 1.  Raises ConfigError when the environment names no serial
    (whatever is attached: with one phone a guess would be right today and
    wrong the day a second one is plugged in), DeviceError when two attached
    devices answer to the serial.
    """
    from ..errors import ConfigError, DeviceError
    if not resource.serial:
        where = config_file or "the labgrid environment"
        raise ConfigError(where, [f"{where}: AndroidDevice has no serial; pkvmlab only talks to a device named by "
                                  f"its serial. Attached ({tool}): {describe(listing)}"])
    wanted = resource.serial if tool == "adb" else resource.fastboot_id
    matches = [entry for entry in listing if entry[0] == wanted]
    if len(matches) > 1:
        raise DeviceError(f"{len(matches)} devices attached answer to serial {wanted} ({tool}: "
                          f"{describe(listing)}); refusing to guess which one to use: unplug all but one")
    return len(matches)
