"""AndroidStrategy: a Pixel from wherever it is to a root shell on the kernel we gave it.

States, each reached through the one before it (``transition("root")`` from
``unknown`` walks them all):

``off``
    pkvmlab lets go of the phone: drivers deactivated, no command sent (a phone
    has no power switch we control; it stays as it is).
``bootloader``
    The phone is in fastboot mode: found by its serial in ``fastboot devices``
    or, if Android is up, sent there with ``adb reboot bootloader``.
``flashed``
    The image set is on the phone.  Every image's sha256 is checked against the
    provisioned ``SHA256SUMS`` before anything is written, and each file is
    copied aside and checked again right before fastboot reads it, so a file
    changed after provisioning is never written.  A locked bootloader
    (``fastboot getvar unlocked``) is refused.  ``mode: boot`` sends boot.img
    with ``fastboot boot`` (one-off: nothing is written, the next reboot runs the
    phone's own kernel again); ``mode: flash`` writes each partition the set
    names to the active slot (``fastboot flash boot_a ...``).  Partitions the
    set does not name are never touched.
``android``
    Android booted (``sys.boot_completed`` = 1 within ``boot_timeout``); the
    set's ``com.android.virt`` APEX, if any, installed and activated by a reboot.
``root``
    ``adb root`` and a uid-0 shell (userdebug/eng builds only).

Config:
    mode (str): ``boot`` (one-off, default) or ``flash`` (persistent, active slot)
    boot_timeout (float): seconds for fastboot mode to appear and for Android to finish booting (default 300)
    image_dir (str): provisioned image directory; default ``$LG_PKVMLAB_IMAGES``; none: flash nothing
"""

import enum
import functools
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import attr
from labgrid.factory import target_factory
from labgrid.step import step
from labgrid.strategy.common import Strategy, StrategyError

from ..errors import ConfigError, DeviceError, ImageError
from ..images.cache import sha256_file
from . import adbdriver, androidresource, fastbootdriver  # noqa: F401  (register what the bindings name)
from .strategystate import parse_status

# The partitions pkvmlab may write, in the order it writes them; image-set keys use these names.
PARTITIONS = ("boot", "init_boot", "vendor_boot", "vendor_kernel_boot", "dtbo")
APEX_KEY = "com.android.virt"
_MAGIC = {
    "boot": b"ANDROID!", "init_boot": b"ANDROID!", "vendor_boot": b"VNDRBOOT", "vendor_kernel_boot": b"VNDRBOOT",
    "dtbo": bytes.fromhex("d7b7ab1e"), APEX_KEY: b"PK\x03\x04",
}
_FILE_NAMES = {APEX_KEY: "com.android.virt.apex"}   # adb install recognises an APEX by its extension


def never_retry(func):
    """labgrid's ``never_retry``, but the first failure is raised as itself.

    labgrid's decorator replaces every error with "AndroidStrategy is in broken
    state"; a report whose message is that line hides the one thing a lab needs
    (locked bootloader, wrong sha256, device gone).  Here the first call raises
    the original error and only later calls get the "broken" StrategyError.
    """
    @functools.wraps(func)
    def wrapper(self, *args, **kwargs):
        if self.broken:
            raise StrategyError(f"{type(self).__name__} is broken by an earlier error: {self.broken}") \
                from self.broken
        try:
            return func(self, *args, **kwargs)
        except Exception as err:
            self.broken = err
            raise
    return wrapper


class Status(enum.Enum):
    unknown = 0
    off = 1
    bootloader = 2
    flashed = 3
    android = 4
    root = 5


@dataclass(frozen=True)
class Image:
    key: str
    path: Path
    sha256: str


def read_sha256sums(directory):
    sums_path = Path(directory) / "SHA256SUMS"
    if not sums_path.is_file():
        raise ImageError(f"{sums_path} not found: flash images only from a provisioned image set "
                         "(pkvmlab images fetch / pkvmlab run)")
    sums = {}
    for line in sums_path.read_text().splitlines():
        if line.strip():
            sha, _, key = line.partition("  ")
            sums[key.strip()] = sha.strip().lower()
    return sums


def image_plan(directory):
    """(partition images in write order, APEX image or None) named by the set; every sha256 and magic checked.

    Raises ImageError listing every image that is missing, differs from SHA256SUMS or is not what its key says.
    """
    directory = Path(directory)
    sums = read_sha256sums(directory)
    problems, images = [], {}
    for key in [*PARTITIONS, APEX_KEY]:
        if key not in sums:
            continue
        path = directory / key
        if not path.is_file():
            problems.append(f"{key}: {path} not found")
            continue
        actual = sha256_file(path)
        if actual != sums[key]:
            problems.append(f"{key}: {path} has sha256 {actual}, SHA256SUMS says {sums[key]}")
            continue
        with open(path, "rb") as file:
            head = file.read(8)
        if not head.startswith(_MAGIC[key]):
            problems.append(f"{key}: {path} does not start with {_MAGIC[key]!r} (starts {head!r}): not a {key} image")
            continue
        images[key] = Image(key, path, sums[key])
    if problems:
        raise ImageError("image set not flashed, nothing written:\n  " + "\n  ".join(problems))
    return [images[k] for k in PARTITIONS if k in images], images.get(APEX_KEY)


@target_factory.reg_driver
@attr.s(eq=False)
class AndroidStrategy(Strategy):
    bindings = {"adb": "AdbDriver", "fastboot": "AndroidFastbootDriver"}

    status = attr.ib(default=Status.unknown)
    mode = attr.ib(default="boot", validator=attr.validators.in_(("boot", "flash")))
    boot_timeout = attr.ib(default=300.0, converter=float)
    image_dir = attr.ib(default=None, validator=attr.validators.optional(attr.validators.instance_of(str)))

    def __attrs_post_init__(self):
        super().__attrs_post_init__()
        self.boot_seconds = None
        self.flash_record = []     # what was sent to which partition, for the run's report
        self._one_off_booted = False
        self._staging = None
        self._apex = None
        self._boot_started = None

    # -- images ------------------------------------------------------------------------------------------

    def images_directory(self):
        directory = self.image_dir or os.environ.get("LG_PKVMLAB_IMAGES")
        return Path(directory) if directory else None

    def _stage(self, image):
        """A private copy of ``image`` whose sha256 is checked again now: what fastboot/adb will read."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="pkvmlab-flash-"))
        copy = self._staging / _FILE_NAMES.get(image.key, f"{image.key}.img")
        shutil.copyfile(image.path, copy)
        actual = sha256_file(copy)
        if actual != image.sha256:
            raise ImageError(f"{image.key}: {image.path} changed after provisioning (sha256 now {actual}, "
                             f"SHA256SUMS says {image.sha256}); not flashed")
        return copy

    def _unstage(self):
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None

    # -- transitions -------------------------------------------------------------------------------------

    @never_retry
    @step(args=["status"])
    def transition(self, status, *, step):  # pylint: disable=redefined-outer-name
        status = parse_status(Status, status)
        if status == Status.unknown:
            raise StrategyError(f"can not transition to {status.name}")
        if status == self.status:
            step.skip("nothing to do")
            return
        try:
            if status == Status.off:
                self.target.deactivate(self.adb)
                self.target.deactivate(self.fastboot)
            elif status == Status.bootloader:
                self.transition(Status.off)
                self._to_bootloader()
            elif status == Status.flashed:
                self.transition(Status.bootloader)
                self._flash()
            elif status == Status.android:
                if self.status != Status.root:
                    self.transition(Status.flashed)
                    self._to_android()
            elif status == Status.root:
                self.transition(Status.android)
                self.adb.root()
        finally:
            self._unstage()
        self.status = status

    def _serial(self):
        return self.fastboot.fastboot.fastboot_id

    def _to_bootloader(self):
        if self.fastboot.present():
            self.target.activate(self.fastboot)
            return
        if self.adb.present():
            self.target.activate(self.adb)
            self.adb.reboot("bootloader")
            self.target.deactivate(self.adb)
            self.fastboot.wait_for_device(self.boot_timeout)
            self.target.activate(self.fastboot)
            return
        raise DeviceError(f"{self._serial()} is attached neither to adb nor in fastboot mode "
                          f"(adb: {self.adb.devices_described() or 'none'}; fastboot: "
                          f"{self.fastboot.devices() or 'none'})")

    def _flash(self):
        self._one_off_booted = False
        self._apex = None
        directory = self.images_directory()
        if directory is None:
            self.logger.info("no image set (LG_PKVMLAB_IMAGES unset): the device keeps its own images")
            return
        partitions, apex = image_plan(directory)        # every checksum before anything is written
        self._apex = apex
        if not partitions:
            self.logger.info("the image set names no partition: the device keeps its own kernel")
            return
        serial = self._serial()
        unlocked = self.fastboot.getvar("unlocked")
        if unlocked != "yes":
            raise DeviceError(
                f"{serial}: the bootloader is locked (fastboot getvar unlocked: {unlocked!r}); nothing was written. "
                "pkvmlab never unlocks a phone (unlocking wipes it): enable 'OEM unlocking' in Developer options, "
                "run 'fastboot flashing unlock' yourself, then run again")
        if self.mode == "boot":
            boot = next((image for image in partitions if image.key == "boot"), None)
            if boot is None:
                raise ConfigError(str(directory), [f"{directory}: mode 'boot' (fastboot boot) needs a 'boot' image; "
                                                   f"the set has {', '.join(i.key for i in partitions)}"])
            unused = [image.key for image in partitions if image.key != "boot"]
            if unused:
                self.logger.warning("one-off boot: %s not used (fastboot boot loads boot.img only; "
                                    "use mode: flash to write them)", ", ".join(unused))
            self._one_off_boot(boot)
            return
        slot = self.fastboot.getvar("current-slot")
        if slot not in ("a", "b"):
            raise DeviceError(f"{serial}: fastboot getvar current-slot answered {slot!r}, not a or b")
        for image in partitions:
            partition = f"{image.key}_{slot}"
            staged = self._stage(image)
            try:
                self.fastboot.flash(partition, str(staged))
            except DeviceError as err:
                written = [r["partition"] for r in self.flash_record if r.get("result") == "written"]
                self.flash_record.append({"partition": partition, "sha256": image.sha256, "result": "failed"})
                state = ("written before the failure: " + ", ".join(written)) if written else "nothing was written"
                raise DeviceError(f"{err} ({state})") from None
            self.flash_record.append({"partition": partition, "sha256": image.sha256, "result": "written"})

    def _one_off_boot(self, boot):
        staged = self._stage(boot)
        self._boot_started = time.monotonic()
        self.fastboot.boot(str(staged))
        self.flash_record.append({"partition": None, "fastboot": "boot", "sha256": boot.sha256,
                                  "result": "booted once"})
        self._one_off_booted = True

    def _wait_for_android(self):
        started = self._boot_started or time.monotonic()
        self.target.deactivate(self.fastboot)
        self.adb.wait_for_device(self.boot_timeout)
        self.target.activate(self.adb)
        left = max(1.0, self.boot_timeout - (time.monotonic() - started))
        self.adb.wait_for_boot(left)
        return time.monotonic() - started

    def _to_android(self):
        if not self._one_off_booted:
            self._boot_started = time.monotonic()
            self.fastboot("reboot")
        self.boot_seconds = self._wait_for_android()
        apex = self._apex
        if apex is None:
            return
        self.adb.install(str(self._stage(apex)))
        self.flash_record.append({"partition": None, "apex": APEX_KEY, "sha256": apex.sha256, "result": "installed"})
        # A staged APEX activates at the next boot; a one-off kernel has to be sent again for it.
        if self._one_off_booted:
            self.adb.reboot("bootloader")
            self.target.deactivate(self.adb)
            self.fastboot.wait_for_device(self.boot_timeout)
            self.target.activate(self.fastboot)
            boot, _ = image_plan(self.images_directory())
            self._one_off_boot(next(image for image in boot if image.key == "boot"))
        else:
            self._boot_started = time.monotonic()
            self.adb.reboot()
            self.target.deactivate(self.adb)
        self._wait_for_android()

    @never_retry
    @step(args=["status"])
    def force(self, status, *, step):  # pylint: disable=redefined-outer-name
        status = parse_status(Status, status)
        if status in (Status.android, Status.root):
            self.target.activate(self.adb)
        elif status in (Status.bootloader, Status.flashed):
            self.target.activate(self.fastboot)
        self.status = status
