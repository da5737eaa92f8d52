"""RunState: everything one pytest run on one board decided before the board boots.

Resolves the board (``--board`` or the environment's ``options.pkvmlab_board``),
applies matrix overrides (kernel suite, kvm-arm.mode), provisions the image
set, exports ``LG_PKVMLAB_*`` for the labgrid environment's templates and
creates ``reports/<run-id>/``.  Everything that can be wrong with the user's
input is checked here, before a report directory exists, so bad input leaves
no half-written report.
"""

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from .boards import check_cpu, load_board, project_root
from .errors import ConfigError, InfrastructureError
from .images.emulator import resolve_emulator
from .images.manifest import load_image_set
from .images.provision import provision
from .timeline import Timeline

# What each kvm-arm.mode leads to on a board whose CPU has VHE and EL2 (QEMU -cpu max) ...
EXPECTED_KVM_MODE = {"protected": "protected", "nvhe": "nvhe", "default": "vhe", "none": "none"}
# ... and on one without VHE (QEMU -cpu cortex-a72): no hVHE, and the default is nVHE.
EXPECTED_KVM_MODE_NO_VHE = {"protected": "protected-nvhe", "nvhe": "nvhe", "default": "nvhe", "none": "none"}
KVM_ARM_MODES = tuple(EXPECTED_KVM_MODE)


class _TolerantLoader(yaml.SafeLoader):
    """YAML as labgrid reads it, with its tags (``!template``...) read as nothing."""


_TolerantLoader.add_constructor(None, lambda loader, node: None)


def _env_option(env_path, name):
    try:
        data = yaml.load(Path(env_path).read_text(), Loader=_TolerantLoader)  # noqa: S506
    except (OSError, yaml.YAMLError):
        return None   # labgrid reports a broken environment file itself
    options = (data or {}).get("options") or {}
    return options.get(name) if isinstance(options, dict) else None


def board_named_by_env(env_path):
    """``options.pkvmlab_board`` of a labgrid environment file, or None."""
    return _env_option(env_path, "pkvmlab_board")


def image_set_named_by_env(env_path):
    """``options.pkvmlab_image_set`` of a labgrid environment file, or None.

    An environment that is itself a test fixture (envs/pixel-sim.yaml: the Pixel simulator) names the
    image set made for it, so the shipped board files need not name images no real device may get.
    """
    return _env_option(env_path, "pkvmlab_image_set")


def with_kvm_mode(board, mode):
    """The board asked to boot with kvm-arm.mode=``mode``, and what that leads us to expect."""
    words = [w for w in board.kernel_args.split() if not w.startswith("kvm-arm.mode=")]
    if mode != "default":
        words.append(f"kvm-arm.mode={mode}")
    board = dataclasses.replace(board, kernel_args=" ".join(words))
    return _expect_for_mode(board, mode, pvm=board.expect.pvm if mode == "protected" else False)


def with_cpu(board, cpu):
    """The QEMU board run with ``-cpu cpu``; the KVM mode it must reach follows the CPU's VHE."""
    check_cpu(cpu, "--cpu")
    board = dataclasses.replace(board, emulator=dataclasses.replace(board.emulator, cpu=cpu))
    return _expect_for_mode(board, board.kvm_arm_mode, pvm=board.expect.pvm)


def _expect_for_mode(board, mode, pvm):
    expect = board.expect
    if expect.boot_el != "EL2":
        return board
    vhe = board.emulator.has_vhe if board.emulator else True
    table = EXPECTED_KVM_MODE if vhe else EXPECTED_KVM_MODE_NO_VHE
    expect = dataclasses.replace(expect, kvm_mode=table.get(mode, expect.kvm_mode), pvm=pvm)
    return dataclasses.replace(board, expect=expect)


def new_run_id(board_name, suffix=""):
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{stamp}-{board_name}{suffix}")


def make_run_dir(reports, run_id, chosen):
    """Create ``reports/<run_id>``; returns (run_dir, run_id).

    A chosen ``--run-id`` may be reused (its files are replaced).  A generated id
    has one-second resolution, so two runs started in the same second get
    ``-2``, ``-3``...: ``mkdir`` without ``exist_ok`` is the atomic claim.
    A reports directory that cannot be written is the lab's problem, said in one line.
    """
    try:
        reports.mkdir(parents=True, exist_ok=True)
        if chosen:
            (reports / run_id).mkdir(exist_ok=True)
            return reports / run_id, run_id
        for n in range(1, 1000):
            candidate = run_id if n == 1 else f"{run_id}-{n}"
            try:
                (reports / candidate).mkdir()
                return reports / candidate, candidate
            except FileExistsError:
                continue
        raise InfrastructureError(f"{reports}: 999 runs named {run_id}* already exist")
    except OSError as err:
        raise InfrastructureError(f"reports directory {reports} cannot be written: "
                                  f"{err.strerror or err} ({err.filename or reports})") from None


def check_environment_file(path):
    """A labgrid environment file that is not YAML: ConfigError naming file:line, not labgrid's traceback."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(path, [f"{path}: labgrid environment cannot be read: {err.strerror or err}"]) from None
    try:
        data = yaml.load(text, Loader=_TolerantLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(path, [f"{where}: not valid YAML: {what}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise ConfigError(path, [f"{path}: a labgrid environment needs a 'targets' mapping"])


class RunState:
    def __init__(self, board, image_set, provisioned, run_dir, run_id, kernel_suite=None, emulator=None):
        self.board = board
        self.emulator = emulator     # pkvmlab.images.emulator.Emulator, on QEMU boards
        self.image_set = image_set
        self.provisioned = provisioned
        self.run_dir = run_dir
        self.run_id = run_id
        self.kernel_suite = kernel_suite
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.junit_final = None
        self.junit_partial = None
        self.measured = {}
        self.session = None          # BoardSession, once booted
        self.running = None          # the pytest item running now (named in JUnit after an interrupt)
        self.outcomes = {}           # (nodeid, when) -> pkvmlab.outcome.Outcome of each failure
        self.interrupted_by = None   # "SIGTERM", "SIGINT", "SIGHUP" once a signal ended the run
        self.session_running = False     # pytest's session collects or runs tests (plugin/hooks.py)
        self.timeline = Timeline()   # where the run's time goes (timeline.json; the plugin replaces it)
        self.boot_cost = None        # (node id whose setup booted the board, seconds): not that test's time
        self.powered_on_early = None  # the strategy, when the board was powered on at session start
        self.journal_error = None    # the OSError that stopped results.jsonl (disk full), if any
        self.dry = False             # --help, --collect-only...: nothing is provisioned or written
        self.kernel_suite_override = None   # --kernel-suite, when not the image set's own suite
        self.qemu_override = None    # --qemu, when not the default (auto)
        self.strict_findings = False   # --strict-findings / PKVMLAB_STRICT_FINDINGS=1: waived findings fail
        self.findings = {}           # nodeid -> report.findings.Finding of each waived check
        self.case_measured = {}      # nodeid -> {key: value} the test measured (its system-out)

    @classmethod
    def from_options(cls, option, dry=False):
        """None when no board is chosen; raises ConfigError/ImageError/InfrastructureError on bad input.

        ``dry`` (pytest only prints: --help, --collect-only): the board and image set are checked,
        nothing is fetched, provisioned or written.
        """
        name = option.pkvmlab_board
        lg_env = option.lg_env or os.environ.get("LG_ENV")
        if not name and lg_env:
            name = board_named_by_env(lg_env)
        if not name:
            return None
        board = load_board(name)
        if (option.pkvmlab_qemu or option.pkvmlab_cpu) and board.emulator is None:
            raise ConfigError(board.path, [f"{board.path}: --qemu/--cpu apply to QEMU boards only "
                                           f"(this board has no 'emulator' section)"])
        if option.pkvmlab_cpu:
            board = with_cpu(board, option.pkvmlab_cpu)
        if option.pkvmlab_kvm_mode:
            board = with_kvm_mode(board, option.pkvmlab_kvm_mode)
        set_name = board.image_set or image_set_named_by_env(lg_env or board.env)
        image_set = load_image_set(set_name) if set_name else None
        default_suite = (image_set.kernel.debian.suite if image_set and image_set.kernel and image_set.kernel.debian
                         else None)
        if option.pkvmlab_kernel_suite:
            if not (image_set and image_set.kernel):
                raise ConfigError(board.path, [f"{board.path}: --kernel-suite needs an image set with a kernel"])
            image_set = image_set.with_kernel_suite(option.pkvmlab_kernel_suite)
            # Whether this kernel can make protected VMs is what the run measures, not a requirement.
            board = dataclasses.replace(board, expect=dataclasses.replace(board.expect, pvm=None)
                                        if board.expect.pvm else board.expect)
        check_environment_file(lg_env or board.env)
        reports = Path(option.pkvmlab_reports or project_root() / "reports")
        if dry:
            state = cls(board, image_set, None, reports / "(none)", "(none)", option.pkvmlab_kernel_suite)
            state.reports_dir, state.dry = reports, True
            state._set_overrides(option, default_suite)
            return state
        emulator = None
        if board.emulator is not None:
            emulator = resolve_emulator(option.pkvmlab_qemu, board.emulator.qemu_min_version,
                                        refresh=option.pkvmlab_refresh_images)
        provisioned = provision(image_set, refresh=option.pkvmlab_refresh_images) if image_set else None
        suffix = ""
        if option.pkvmlab_kernel_suite or option.pkvmlab_kvm_mode:
            suffix = f"-{option.pkvmlab_kernel_suite or 'default'}-{option.pkvmlab_kvm_mode or board.kvm_arm_mode}"
        if option.pkvmlab_qemu or option.pkvmlab_cpu:
            suffix += f"-{emulator.label}-{board.emulator.cpu_model}"
        run_dir, run_id = make_run_dir(reports, option.pkvmlab_run_id or new_run_id(board.name, suffix),
                                       chosen=bool(option.pkvmlab_run_id))
        state = cls(board, image_set, provisioned, run_dir, run_id, option.pkvmlab_kernel_suite, emulator)
        state.reports_dir = reports
        state._set_overrides(option, default_suite)
        if provisioned:
            record = dict(provisioned.record)
            if emulator:
                record["emulator"] = dict(emulator.record(), cpu=board.emulator.cpu)
            target = run_dir / "images.json"
            try:
                target.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            except OSError as err:
                raise InfrastructureError(f"{target} cannot be written: {err.strerror or err}") from None
        return state

    def _set_overrides(self, option, default_suite):
        suite = option.pkvmlab_kernel_suite
        self.kernel_suite_override = suite if suite and suite != default_suite else None
        qemu = option.pkvmlab_qemu
        if qemu and qemu != "auto":
            # A path names the emulator by what it is (its version label), not where it lies.
            self.qemu_override = self.emulator.label if ("/" in qemu and self.emulator) else qemu
        self.strict_findings = bool(getattr(option, "pkvmlab_strict_findings", False)) or \
            os.environ.get("PKVMLAB_STRICT_FINDINGS", "") not in ("", "0")

    @property
    def identity(self):
        """The classname prefix of every test of this run (``pkvmlab.report.identity``)."""
        from .report.record import identity_prefix
        return identity_prefix(self.board.name, self.board.kvm_arm_mode, cpu=self.cpu,
                               kernel_suite=self.kernel_suite_override, qemu=self.qemu_override)

    def export_environment(self):
        """The variables the labgrid environment's !template values refer to."""
        if self.dry:    # labgrid resolves the templates when it loads the file; nothing runs
            for name in ("LG_PKVMLAB_IMAGES", "LG_PKVMLAB_QEMU", "LG_PKVMLAB_CPU", "LG_PKVMLAB_TFTP_DIR"):
                os.environ.setdefault(name, "(not provisioned)")
        elif self.board.delivery == "tftp":
            os.environ["LG_PKVMLAB_TFTP_DIR"] = self.make_tftp_dir()
        if self.provisioned:
            os.environ["LG_PKVMLAB_IMAGES"] = str(self.provisioned.directory)
        os.environ["LG_PKVMLAB_KERNEL_ARGS"] = self.board.kernel_args
        if self.emulator:
            os.environ["LG_PKVMLAB_QEMU"] = str(self.emulator.binary)
            os.environ["LG_PKVMLAB_CPU"] = self.board.emulator.cpu

    def make_tftp_dir(self):
        """A TFTP directory of this run's own (``$LG_PKVMLAB_TFTP_DIR``), for loopback bench boards.

        Two runs of one QEMU U-Boot board at once must not serve each other's kernel; a
        physical board's env names its lab's TFTP root instead and ignores this.  The
        directory carries an owner file, so one left by a SIGKILLed run is swept by the next.
        """
        from .childproc import mark_owned, sweep_stale
        sweep_stale("pkvmlab-tftp-*")
        self.tftp_dir = tempfile.mkdtemp(prefix="pkvmlab-tftp-")
        mark_owned(self.tftp_dir)
        return self.tftp_dir

    def remove_scratch(self):
        """Remove what :meth:`make_tftp_dir` made (at the end of the run, whatever its outcome)."""
        if getattr(self, "tftp_dir", None):
            shutil.rmtree(self.tftp_dir, ignore_errors=True)
            self.tftp_dir = None

    @property
    def cpu(self):
        return self.board.emulator.cpu if self.board.emulator else None

    @property
    def has_console(self):
        """Whether the board has a console the harness logs (phones have only adb)."""
        return self.board.has_console

    @property
    def kernel_release(self):
        if self.provisioned and self.provisioned.kernel_release:
            return self.provisioned.kernel_release
        return "unknown-kernel"

    @property
    def suite_name(self):
        """``board/kernel/mode``, and on QEMU boards ``/qemu-<version>/<cpu model>``: how dashboards group runs.

        The emulator and CPU model are part of what was tested: the same kernel and mode
        behave differently on QEMU 7.2 and 10.0, and under -cpu max (hVHE) and cortex-a72 (nVHE).
        """
        name = f"{self.board.name}/{self.kernel_release}/{self.board.kvm_arm_mode}"
        if self.emulator:
            name += f"/{self.emulator.label}/{self.board.emulator.cpu_model}"
        return name

    def static_properties(self):
        """Testsuite properties known before the board boots."""
        props = {
            "pkvmlab.board": self.board.name,
            "pkvmlab.soc": self.board.soc,
            "pkvmlab.console": self.board.console,
            "pkvmlab.power": self.board.power,
            "pkvmlab.firmware_path": self.board.firmware,
            "pkvmlab.image_delivery": self.board.delivery,
            "pkvmlab.kvm_arm_mode": self.board.kvm_arm_mode,
            "pkvmlab.identity": self.identity,
            "pkvmlab.run_id": self.run_id,
            "pkvmlab.started": self.started,
        }
        if self.has_console:
            props["pkvmlab.console_log"] = "console.log"
        if self.emulator:
            props["pkvmlab.emulator"] = self.emulator.label
            props["pkvmlab.emulator_version"] = self.emulator.version_line
            props["pkvmlab.emulator_source"] = self.emulator.source
            if self.emulator.package:
                props["pkvmlab.emulator_package"] = self.emulator.package
            props["pkvmlab.cpu"] = self.board.emulator.cpu
        record = self.provisioned.record if self.provisioned else {}
        if "kernel" in record:
            kernel = record["kernel"]
            props["pkvmlab.kernel_image_sha256"] = kernel["sha256"]
            if kernel.get("package"):
                props["pkvmlab.kernel_package"] = f"{kernel['package']} {kernel['version']}"
                props["pkvmlab.kernel_suite"] = kernel["suite"]
        if "initramfs" in record:
            props["pkvmlab.initramfs_sha256"] = record["initramfs"]["sha256"]
        if self.image_set:
            props["pkvmlab.image_set"] = self.image_set.name
        if self.strict_findings:
            props["pkvmlab.strict_findings"] = "yes"
        if os.environ.get("LG_PKVMLAB_PLACE"):     # a run on a place of labgrid's coordinator (docs/lab.md)
            props["pkvmlab.place"] = os.environ["LG_PKVMLAB_PLACE"]
            props["pkvmlab.coordinator"] = os.environ.get("LG_COORDINATOR", "")
        return props
