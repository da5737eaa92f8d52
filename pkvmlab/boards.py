"""Board files: what a board is and what a correct boot on it looks like.

A board file (``boards/<name>.yaml``) holds facts (SoC, which labgrid environment
drives it, which image set it boots) and expectations (boot EL, KVM mode, whether
protected VMs must work).  Suites compare measured facts against these
expectations, so a wrong expectation shows up as a failing test that says
expected vs measured.  This module knows nothing of labgrid or pytest.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, UnknownNameError
from .facts.probe import PROBES, VM_TYPES
from .yamlfile import Field, check_fields, load_yaml, raise_if_problems

# How the harness reaches a board: four facts, each with one owner in the code.
#   console:  serial - a labgrid console (NetworkSerialPort, QEMU's stdio) logged to console.log;
#             adb    - an Android shell over adb only (no console to log; adb/fastboot audited).
#   power:    emulator - the harness starts and stops QEMU; pdu - a labgrid power driver;
#             device - the device reboots itself (adb reboot / fastboot), no power control.
#   firmware: what hands over to the kernel: none (QEMU direct kernel boot), u-boot, uefi,
#             abl (Qualcomm/Android bootloader), rpi (Raspberry Pi EEPROM bootloader and firmware).
#   delivery: how kernel and initrd reach the board: qemu (-kernel/-initrd), tftp (labgrid's
#             TFTPProvider), fastboot (partitions flashed by the strategy), lab (the lab flashed
#             the board beforehand; pkvmlab stages nothing).
CONSOLES = ("serial", "adb")
POWERS = ("emulator", "pdu", "device")
FIRMWARES = ("none", "u-boot", "uefi", "abl", "rpi")
DELIVERIES = ("qemu", "tftp", "fastboot", "lab")
BOOT_ELS = ("EL1", "EL2")
# "protected" accepts either pKVM flavour; the others name one exact mode.
# Who holds EL2 on a board whose Linux boots at EL1 (pkvmlab/facts/el2holder.py); "none": no EL2 at all.
EL2_HOLDERS = ("Gunyah", "GenieZone", "QHEE", "none")
KVM_MODES = ("protected", "protected-nvhe", "protected-hvhe", "nvhe", "hvhe", "vhe", "none")

_EXPECT_SCHEMA = {
    "boot_el": Field((str,), required=True, choices=BOOT_ELS),
    "kvm_mode": Field((str,), required=True, choices=KVM_MODES),
    "pvm": Field((bool,), required=True),
    "avf": Field((bool,)),
    "known_findings": Field((dict,)),
    "emulator_artifacts": Field((dict,)),
    "el2_holder": Field((str,), choices=EL2_HOLDERS),
}
# expect.known_findings.<probe>/<vm>: the reason as text, or {reason, reference} (an issue, a document).
_FINDING_SCHEMA = {
    "reason": Field((str,), required=True),
    "reference": Field((str,)),
}
_ARTIFACT_SCHEMA = {
    "qemu_below": Field((str,), required=True),
    "kvm_mode": Field((str,), choices=KVM_MODES),
    "reason": Field((str,), required=True),
    "reference": Field((str,), required=True),
}

# What QEMU's CPU models offer that decides the KVM mode (measured on QEMU 7.2 and 10.0 with Debian's
# 7.3 kernel): ``max`` has VHE (kvm-arm.mode=protected gives protected hVHE, the default gives VHE);
# ``cortex-a72`` is Armv8.0 without VHE (protected gives protected nVHE, as on most Android phones,
# and the default gives nVHE).  VHE is an Armv8.1 feature (Arm ARM, FEAT_VHE).  cortex-a57 hangs in
# protected mode under TCG (README, Boards).
CPU_HAS_VHE = {"max": True, "cortex-a72": False, "cortex-a57": False, "cortex-a53": False}

_EMULATOR_SCHEMA = {
    "cpu": Field((str,), required=True),
    "qemu_min_version": Field((str,)),
    "why": Field((str,)),
}

# lab: how the board is reached as a place on labgrid's coordinator (docs/lab.md): the labgrid
# environment of such a place (a RemotePlace plus the board's drivers) and tags added to its facts'.
_LAB_SCHEMA = {
    "env": Field((str,), required=True),
    "tags": Field((dict,)),
}

_BOARD_SCHEMA = {
    "name": Field((str,), required=True),
    "description": Field((str,)),
    "soc": Field((str,), required=True),
    "console": Field((str,), required=True, choices=CONSOLES),
    "power": Field((str,), required=True, choices=POWERS),
    "firmware": Field((str,), required=True, choices=FIRMWARES),
    "delivery": Field((str,), required=True, choices=DELIVERIES),
    "env": Field((str,), required=True),
    "image_set": Field((str,)),
    "kernel_args": Field((str,)),
    "boot_timeout": Field((int, float)),
    "boot_retries": Field((int,)),
    "ready_state": Field((str,)),
    "emulator": Field((dict,), schema=_EMULATOR_SCHEMA),
    "expect": Field((dict,), required=True, schema=_EXPECT_SCHEMA),
    "lab": Field((dict,), schema=_LAB_SCHEMA),
}


@dataclass(frozen=True)
class EmulatorArtifact:
    """A failure the emulator causes, not the board: where it shows (QEMU below a version, a KVM mode)."""

    qemu_below: str
    reason: str
    reference: str
    kvm_mode: str = None

    def applies(self, qemu_version, kvm_mode):
        if qemu_version is None or version_tuple(qemu_version) >= version_tuple(self.qemu_below):
            return False
        return self.kvm_mode is None or self.kvm_mode == kvm_mode

    @property
    def scope(self):
        return f"QEMU < {self.qemu_below}" + (f", {self.kvm_mode}" if self.kvm_mode else "")


def version_tuple(text):
    """'10.0.2' -> (10, 0, 2): versions compared as numbers."""
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@dataclass(frozen=True)
class Expectations:
    boot_el: str
    kvm_mode: str
    pvm: bool
    avf: bool = False
    # "<probe>/<vm>" -> why: a failure of that pvm check is a documented finding on this
    # board (reported as xfail with the measured values), not a new regression.
    known_findings: tuple = ()
    # "<probe>/<vm>" -> EmulatorArtifact: a failure of that check that the emulator explains
    # (measured under one QEMU version and not another), never counted as the board's.
    emulator_artifacts: tuple = ()
    el2_holder: str = None      # expected firmware hypervisor at EL2 ("none": no EL2); None: not checked
    # "<probe>/<vm>" -> where the known finding is documented (the board file's entry when not given)
    finding_references: tuple = ()

    def known_finding(self, probe, vm):
        return dict(self.known_findings).get(f"{probe}/{vm}")

    def finding_reference(self, probe, vm):
        return dict(self.finding_references).get(f"{probe}/{vm}")

    def emulator_artifact(self, probe, vm, qemu_version, kvm_mode):
        """The artifact that explains a failure of ``probe/vm`` on this emulator and KVM mode, or None."""
        artifact = dict(self.emulator_artifacts).get(f"{probe}/{vm}")
        if artifact is None or not artifact.applies(qemu_version, kvm_mode):
            return None
        return artifact

    def artifact_for(self, probe, vm):
        return dict(self.emulator_artifacts).get(f"{probe}/{vm}")


    @property
    def dev_kvm(self):
        """/dev/kvm must exist exactly when KVM initialised at EL2."""
        return self.kvm_mode != "none"

    def kvm_mode_matches(self, measured):
        if self.kvm_mode == "protected":
            return measured is not None and measured.startswith("protected-")
        return measured == self.kvm_mode


@dataclass(frozen=True)
class EmulatorSpec:
    """What a QEMU board asks of its emulator: the CPU model, and the oldest QEMU it trusts."""

    cpu: str
    qemu_min_version: str = None

    @property
    def cpu_model(self):
        return self.cpu.split(",", 1)[0]

    @property
    def has_vhe(self):
        return CPU_HAS_VHE.get(self.cpu_model)


def check_cpu(cpu, where):
    """ConfigError unless ``cpu`` is a CPU model whose KVM behaviour we know (the expectations depend on it)."""
    model = cpu.split(",", 1)[0]
    if model not in CPU_HAS_VHE:
        raise ConfigError(where, [f"{where}: unknown CPU model '{model}'. Available: {', '.join(CPU_HAS_VHE)}"])


@dataclass(frozen=True)
class Board:
    name: str
    path: Path
    soc: str
    console: str
    power: str
    firmware: str
    delivery: str
    env: Path
    expect: Expectations
    description: str = ""
    image_set: str = None
    kernel_args: str = ""
    boot_timeout: float = 60.0
    boot_retries: int = 0          # boots retried after an infrastructure failure (never after a board's)
    ready_state: str = "shell"
    emulator: EmulatorSpec = None
    lab_env: Path = None           # labgrid environment of this board as a place (lab.env)
    lab_tags: tuple = ()           # (key, value) place tags beyond the board's facts (lab.tags)

    @property
    def has_console(self):
        """A console the harness logs and watches (phones have only adb)."""
        return self.console == "serial"

    @property
    def device_tools(self):
        """Driven by adb/fastboot command lines: each one is audited, the Android suites apply."""
        return self.console == "adb"

    @property
    def kvm_arm_mode(self):
        """The kvm-arm.mode= the kernel command line asks for ('default' if none)."""
        for word in self.kernel_args.split():
            if word.startswith("kvm-arm.mode="):
                return word.split("=", 1)[1]
        return "default"


def project_root():
    """The checkout this package runs from (boards/, envs/, images/ live there)."""
    return Path(__file__).resolve().parent.parent


def boards_dir(root=None):
    return Path(root or project_root()) / "boards"


def known_boards(root=None):
    return sorted(p.stem for p in boards_dir(root).glob("*.yaml"))


def load_board_file(path, root=None):
    """Load and validate one board file; raises ConfigError listing every problem."""
    path = Path(path)
    root = Path(root or project_root())
    data = load_yaml(path)
    problems = []
    if "kind" in data:
        problems.append(f"{path}:{data.line_of('kind')}: kind: replaced by the facts console, power, firmware "
                        f"and delivery (README.md, \"Board files\"); for example a bench board with U-Boot: "
                        f"console: serial, power: pdu, firmware: u-boot, delivery: tftp")
    # a ``kind`` line gets the message above, not also "unknown field"
    schema = {**_BOARD_SCHEMA, "kind": Field((object,))} if "kind" in data else _BOARD_SCHEMA
    problems += check_fields(path, data, schema)
    problems += _wiring_problems(path, data)
    if "name" in data and isinstance(data["name"], str) and data["name"] != path.stem:
        problems.append(f"{path}:{data.line_of('name')}: name: '{data['name']}' differs from the file name "
                        f"'{path.stem}'")
    env_path = None
    if isinstance(data.get("env"), str):
        env_path = (root / data["env"]).resolve()
        if not env_path.is_file():
            problems.append(f"{path}:{data.line_of('env')}: env: environment file {data['env']} not found")
    timeout = data.get("boot_timeout", 60)
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout <= 0:
        problems.append(f"{path}:{data.line_of('boot_timeout')}: boot_timeout: must be > 0 seconds (got {timeout})")
    retries = data.get("boot_retries", 0)
    if isinstance(retries, int) and not isinstance(retries, bool) and not 0 <= retries <= 5:
        problems.append(f"{path}:{data.line_of('boot_retries')}: boot_retries: give 0 to 5 (got {retries})")
    expect = data.get("expect")
    if isinstance(expect, dict) and isinstance(expect.get("known_findings"), dict):
        findings = expect["known_findings"]
        valid = [f"{p}/{v}" for p in PROBES for v in VM_TYPES]
        for key, why in findings.items():
            where = f"{path}:{findings.line_of(key)}: expect.known_findings.{key}"
            if key not in valid:
                problems.append(f"{where}: not a pvm check; valid: {', '.join(valid)}")
            if isinstance(why, dict):
                problems += check_fields(path, why, _FINDING_SCHEMA, prefix=f"expect.known_findings.{key}.")
            elif not isinstance(why, str) or not why.strip():
                problems.append(f"{where}: give the reason as text, or reason and reference")
    artifacts = _load_artifacts(path, expect, problems)
    emulator = data.get("emulator")
    if isinstance(emulator, dict):
        cpu = emulator.get("cpu")
        if isinstance(cpu, str) and cpu.split(",", 1)[0] not in CPU_HAS_VHE:
            problems.append(f"{path}:{emulator.line_of('cpu')}: emulator.cpu: unknown CPU model "
                            f"'{cpu.split(',', 1)[0]}'. Available: {', '.join(CPU_HAS_VHE)}")
        minimum = emulator.get("qemu_min_version")
        if isinstance(minimum, str) and not re.fullmatch(r"\d+(\.\d+){0,2}", minimum):
            problems.append(f"{path}:{emulator.line_of('qemu_min_version')}: emulator.qemu_min_version: "
                            f"give a version such as \"10.0\" (got {minimum!r})")
    lab = data.get("lab")
    lab_env = None
    if isinstance(lab, dict) and isinstance(lab.get("env"), str):
        lab_env = (root / lab["env"]).resolve()
        if not lab_env.is_file():
            problems.append(f"{path}:{lab.line_of('env')}: lab.env: environment file {lab['env']} not found")
    lab_tags = lab.get("tags") if isinstance(lab, dict) and isinstance(lab.get("tags"), dict) else {}
    for key in lab_tags:
        if not re.fullmatch(r"[a-z][a-z0-9_]+", str(key)):
            problems.append(f"{path}:{lab_tags.line_of(key)}: lab.tags.{key}: a tag key is [a-z][a-z0-9_]+ "
                            "(labgrid's rule)")
    raise_if_problems(path, problems)
    return Board(
        lab_env=lab_env, lab_tags=tuple(sorted((str(k), str(v)) for k, v in lab_tags.items())),
        name=data["name"], path=path, soc=data["soc"], env=env_path,
        console=data["console"], power=data["power"], firmware=data["firmware"], delivery=data["delivery"],
        description=data.get("description", ""), image_set=data.get("image_set"),
        kernel_args=data.get("kernel_args", ""), boot_timeout=float(timeout), boot_retries=int(retries),
        ready_state=data.get("ready_state", "shell"),
        emulator=EmulatorSpec(cpu=emulator["cpu"], qemu_min_version=emulator.get("qemu_min_version"))
        if isinstance(emulator, dict) else None,
        expect=Expectations(boot_el=expect["boot_el"], kvm_mode=expect["kvm_mode"],
                            pvm=expect["pvm"], avf=expect.get("avf", False),
                            known_findings=tuple(sorted((k, _finding_reason(v)) for k, v in
                                                        (expect.get("known_findings") or {}).items())),
                            finding_references=tuple(sorted(
                                (k, _finding_reference(path, k, v)) for k, v in
                                (expect.get("known_findings") or {}).items())),
                            emulator_artifacts=tuple(sorted(artifacts.items())),
                            el2_holder=expect.get("el2_holder")),
    )


# Facts that only make sense together (what the code that owns each one relies on).
_WIRING_RULES = (
    (lambda d: d.get("delivery") == "qemu" and not isinstance(d.get("emulator"), dict),
     "delivery", "delivery: qemu (QEMU's -kernel/-initrd) needs an emulator: block"),
    (lambda d: d.get("power") == "emulator" and not isinstance(d.get("emulator"), dict),
     "power", "power: emulator needs an emulator: block (cpu, qemu_min_version)"),
    (lambda d: d.get("console") == "adb" and d.get("power") != "device",
     "console", "console: adb (an Android device) needs power: device"),
    (lambda d: d.get("delivery") == "fastboot" and d.get("console") != "adb",
     "delivery", "delivery: fastboot is driven over adb/fastboot: needs console: adb"),
    (lambda d: d.get("delivery") == "tftp" and d.get("firmware") not in ("u-boot", "uefi", "rpi"),
     "delivery", "delivery: tftp needs firmware that fetches it (u-boot, uefi or rpi)"),
)


def _wiring_problems(path, data):
    if not all(isinstance(data.get(k), str) for k in ("console", "power", "firmware", "delivery")):
        return []     # the schema check names what is missing
    return [f"{path}:{data.line_of(field)}: {message}" for rule, field, message in _WIRING_RULES if rule(data)]


def _finding_reason(entry):
    return entry["reason"] if isinstance(entry, dict) else entry


def _finding_reference(path, key, entry):
    """Where a known finding is documented; without one, the board file entry that waives it."""
    if isinstance(entry, dict) and entry.get("reference"):
        return entry["reference"]
    return f"{Path(path).name}: expect.known_findings.{key}"


def _load_artifacts(path, expect, problems):
    """``expect.emulator_artifacts`` as {check: EmulatorArtifact}; problems appended to ``problems``."""
    artifacts = {}
    if not (isinstance(expect, dict) and isinstance(expect.get("emulator_artifacts"), dict)):
        return artifacts
    entries = expect["emulator_artifacts"]
    valid = [f"{p}/{v}" for p in PROBES for v in VM_TYPES]
    for key, entry in entries.items():
        where = f"{path}:{entries.line_of(key)}: expect.emulator_artifacts.{key}"
        if key not in valid:
            problems.append(f"{where}: not a pvm check; valid: {', '.join(valid)}")
        if not isinstance(entry, dict):
            problems.append(f"{where}: give qemu_below, reason and reference")
            continue
        found = check_fields(path, entry, _ARTIFACT_SCHEMA, prefix=f"expect.emulator_artifacts.{key}.")
        problems.extend(found)
        if not found:
            artifacts[key] = EmulatorArtifact(qemu_below=entry["qemu_below"], reason=entry["reason"],
                                              reference=entry["reference"], kvm_mode=entry.get("kvm_mode"))
    return artifacts


def load_board(name_or_path, root=None):
    """A board by name (``boards/<name>.yaml``) or by path to its file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return load_board_file(candidate, root)
    path = boards_dir(root) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UnknownNameError("board", name_or_path, known_boards(root), where=str(boards_dir(root)))
    return load_board_file(path, root)
