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
    The image set is on the phone.  Every image's sha256 (and magic) is checked
    against the provisioned ``SHA256SUMS`` before any device command, and each
    file is copied aside and checked again right before fastboot reads it, so a
    file changed after provisioning is never written.  A locked bootloader
    (``fastboot getvar unlocked``) is refused.  ``mode: boot`` sends boot.img
    with ``fastboot boot`` (one-off: nothing is written, the next reboot runs the
    phone's own kernel again); ``mode: flash`` is the Pixel kernel flash: the
    bootloader writes ``boot``, ``init_boot``, ``vendor_boot``, ``dtbo``,
    ``vendor_kernel_boot`` and ``vbmeta`` (those the set names) to the active
    slot, then ``fastboot reboot fastboot`` (fastbootd, Android's userspace
    fastboot) writes the logical partitions ``vendor_dlkm`` and ``system_dlkm``:
    logical (dynamic) partitions live in ``super`` and only fastbootd can write
    them (source.android.com/docs/core/architecture/bootloader/fastbootd).  The
    order is the one of source.android.com/docs/setup/build/building-pixel-kernels
    and AOSP kernel/tests ``tools/flash_device.sh`` (``VENDOR_KERNEL_IMGS_PIXEL_BRANCH``).
    Partitions the set does not name are never touched.
``android``
    Android booted (``sys.boot_completed`` = 1 within ``boot_timeout``); the
    set's ``com.android.virt`` APEX, if any, installed and activated by a reboot.
    With nothing to flash (no image set, as pixel-6/7/9 ship) the phone is not
    sent to the bootloader at all: Android is used as it runs.
``root``
    ``adb root`` and a uid-0 shell (userdebug/eng builds only).

Images that can never reach the wrong device: the Pixel simulator's fixture
images carry a marker (:data:`SIM_FIXTURE_MARK`); a set holding one is refused,
before any adb or fastboot command, unless the environment's tools are the
simulator's own (``pkvmlab/sim/bin``).

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
# Bootloader (physical, A/B) partitions first, in the order of the Pixel kernel flash instructions
# (boot, dtbo, vendor_kernel_boot), then the logical ones, which only fastbootd can write.
BOOTLOADER_PARTITIONS = ("boot", "init_boot", "vendor_boot", "dtbo", "vendor_kernel_boot", "vbmeta")
LOGICAL_PARTITIONS = ("vendor_dlkm", "system_dlkm")
PARTITIONS = BOOTLOADER_PARTITIONS + LOGICAL_PARTITIONS
APEX_KEY = "com.android.virt"
# What each image starts with: (offset, magic) alternatives.  Boot images: AOSP system/tools/mkbootimg
# (ANDROID!, VNDRBOOT); DT table: libufdt dt_table.h (0xd7b7ab1e); vbmeta: libavb avb_vbmeta_image.h (AVB0);
# dlkm file systems: Android sparse image (0xed26ff3a, libsparse sparse_format.h), ext4 (0xef53 at 1080),
# EROFS (0xe0f5e1e2 at 1024, little endian).
_MAGIC = {
    "boot": ((0, b"ANDROID!"),), "init_boot": ((0, b"ANDROID!"),), "vendor_boot": ((0, b"VNDRBOOT"),),
    "vendor_kernel_boot": ((0, b"VNDRBOOT"),), "dtbo": ((0, bytes.fromhex("d7b7ab1e")),),
    "vbmeta": ((0, b"AVB0"),), APEX_KEY: ((0, b"PK\x03\x04"),),
}
_FS_MAGIC = ((0, bytes.fromhex("3aff26ed")), (1080, bytes.fromhex("53ef")), (1024, bytes.fromhex("e2e1f5e0")))
_MAGIC.update({key: _FS_MAGIC for key in LOGICAL_PARTITIONS})
_FILE_NAMES = {APEX_KEY: "com.android.virt.apex"}   # adb install recognises an APEX by its extension
# Every fixture image of the Pixel simulator (pkvmlab/sim/images.py) carries this text near its start.
SIM_FIXTURE_MARK = b"pkvmlab simulator fixture"
_SIM_TOOL_MARK = b"pkvmlab Pixel SIMULATOR"   # in pkvmlab/sim/bin/adb and .../fastboot


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


def _has_magic(path, alternatives):
    with open(path, "rb") as file:
        head = file.read(2048)
    return any(head[offset:offset + len(magic)] == magic for offset, magic in alternatives)


def is_sim_fixture(path):
    """Whether ``path`` is one of the Pixel simulator's fake images (never to be written to a phone)."""
    with open(path, "rb") as file:
        return SIM_FIXTURE_MARK in file.read(1 << 16)


def is_sim_tool(tool):
    """Whether ``tool`` (a path or a name on PATH) is the simulator's stand-in for adb/fastboot."""
    found = shutil.which(str(tool)) or str(tool)
    try:
        with open(found, "rb") as file:
            return _SIM_TOOL_MARK in file.read(4096)
    except OSError:
        return False


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
        if not _has_magic(path, _MAGIC[key]):
            with open(path, "rb") as file:
                head = file.read(8)
            wanted = " or ".join(f"{magic!r} at {offset}" for offset, magic in _MAGIC[key])
            problems.append(f"{key}: {path} has no {wanted} (starts {head!r}): not a {key} image")
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
        self._plan = None          # (partition images, APEX image or None), checked once per walk
        self._boot_started = None

    # -- images ------------------------------------------------------------------------------------------

    def images_directory(self):
        directory = self.image_dir or os.environ.get("LG_PKVMLAB_IMAGES")
        return Path(directory) if directory else None

    def plan(self):
        """What this walk writes: (partition images, APEX or None); checked before any device command.

        Refuses (ConfigError) an image set holding simulator fixtures when the tools are not the simulator's.
        """
        if self._plan is not None:
            return self._plan
        directory = self.images_directory()
        if directory is None:
            if self.mode == "flash":
                where = getattr(self.target.env, "config_file", None) if self.target.env else None
                raise ConfigError(where or "AndroidStrategy", [
                    f"{where or 'the labgrid environment'}: AndroidStrategy mode: flash, but the board names no "
                    "image set, so there is nothing to flash (shipped Pixel boards name none). Write an image set "
                    "for your build (images/<name>.yaml: files.boot, files.dtbo, files.vendor_kernel_boot, "
                    "files.vendor_dlkm, files.system_dlkm, each with path and sha256) and set image_set: <name> "
                    "in the board file (docs/pixel.md, 'Point the board at your build'), or use mode: boot"])
            self._plan = ([], None)
            return self._plan
        partitions, apex = image_plan(directory)        # every checksum before anything is written
        fixtures = [image.key for image in [*partitions, *([apex] if apex else [])] if is_sim_fixture(image.path)]
        tools = {"adb": self.adb.tool, "fastboot": self.fastboot.tool}
        real = [f"{name} = {tool}" for name, tool in tools.items() if not is_sim_tool(tool)]
        if fixtures and real:
            where = getattr(self.target.env, "config_file", None) if self.target.env else None
            raise ConfigError(where or str(directory), [
                f"{where or 'the labgrid environment'}: refusing to send Pixel simulator fixtures "
                f"({', '.join(fixtures)}; images/pixel-sim/, provisioned in {directory}) to a device reached with "
                f"real tools ({', '.join(real)}); nothing was sent to it. Point the board's image_set at your own "
                "build (an images/<name>.yaml whose files.<partition>.path and sha256 are your build's; "
                "docs/pixel.md, 'Point the board at your build'), or run with --env envs/pixel-sim.yaml"])
        if self.mode == "flash" and not partitions:
            self.logger.info("mode flash: the image set names no partition; nothing is written")
        self._plan = (partitions, apex)
        return self._plan

    def _nothing_to_do_in_the_bootloader(self):
        partitions, apex = self.plan()
        return not partitions and apex is None

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
                self._plan = None
            elif status == Status.bootloader:
                self.transition(Status.off)
                self.plan()
                self._to_bootloader()
            elif status == Status.flashed:
                self.transition(Status.bootloader)
                self._flash()
            elif status == Status.android:
                if self.status != Status.root:
                    if self.status in (Status.unknown, Status.off) and self._nothing_to_do_in_the_bootloader():
                        self._android_as_it_is()
                    else:
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

    def _android_as_it_is(self):
        """Nothing to flash or install: use Android as it runs (from fastboot mode: continue to Android)."""
        self.target.deactivate(self.fastboot)
        if self.adb.present():
            self.target.activate(self.adb)
            self.adb.wait_for_boot(self.boot_timeout)
            self.logger.info("nothing to flash: %s left running as it is (not rebooted)", self._serial())
            return
        if self.fastboot.present():
            self.target.activate(self.fastboot)
            self._boot_started = time.monotonic()
            self.fastboot("reboot")
            self.boot_seconds = self._wait_for_android()
            return
        raise DeviceError(f"{self._serial()} is attached neither to adb nor in fastboot mode "
                          f"(adb: {self.adb.devices_described() or 'none'}; fastboot: "
                          f"{self.fastboot.devices() or 'none'})")

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
        partitions, _ = self.plan()
        if self.images_directory() is None:
            self.logger.info("no image set (LG_PKVMLAB_IMAGES unset): the device keeps its own images")
            return
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
                directory = self.images_directory()
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
        physical = [image for image in partitions if image.key in BOOTLOADER_PARTITIONS]
        logical = [image for image in partitions if image.key in LOGICAL_PARTITIONS]
        for image in physical:
            self._write(image, slot)
        if logical:
            self._to_fastbootd()
            for image in logical:
                self._write(image, slot)

    def _to_fastbootd(self):
        """``fastboot reboot fastboot``: the same phone (same serial) in Android's userspace fastboot."""
        self.fastboot("reboot", "fastboot")
        self.fastboot.wait_for_device(self.boot_timeout)
        userspace = self.fastboot.getvar("is-userspace")
        if userspace != "yes":
            raise DeviceError(f"{self._serial()}: after 'fastboot reboot fastboot' getvar is-userspace says "
                              f"{userspace!r}, not 'yes': fastbootd did not start, logical partitions not written")
        self.flash_record.append({"partition": None, "fastboot": "reboot fastboot", "result": "fastbootd"})

    def _write(self, image, slot):
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
        _, apex = self.plan()
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
            boot, _ = self.plan()
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
