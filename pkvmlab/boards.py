"""Board files: what a board is and what a correct boot on it looks like.

A board file (``boards/<name>.yaml``) holds facts (SoC, which labgrid environment
drives it, which image set it boots) and expectations (boot EL, KVM mode, whether
protected VMs must work).  Suites compare measured facts against these
expectations, so a wrong expectation shows up as a failing test that says
expected vs measured.  This module knows nothing of labgrid or pytest.
"""

from dataclasses import dataclass
from pathlib import Path

from .errors import UnknownNameError
from .facts.probe import PROBES, VM_TYPES
from .yamlfile import Field, check_fields, load_yaml, raise_if_problems

BOARD_KINDS = ("qemu", "android", "devboard")
BOOT_ELS = ("EL1", "EL2")
# "protected" accepts either pKVM flavour; the others name one exact mode.
# Who holds EL2 on a board whose Linux boots at EL1 (pkvmlab/facts/el2holder.py); "none": no EL2 at all.
EL2_HOLDERS = ("Gunyah", "GenieZone", "none")
KVM_MODES = ("protected", "protected-nvhe", "protected-hvhe", "nvhe", "hvhe", "vhe", "none")

_EXPECT_SCHEMA = {
    "boot_el": Field((str,), required=True, choices=BOOT_ELS),
    "kvm_mode": Field((str,), required=True, choices=KVM_MODES),
    "pvm": Field((bool,), required=True),
    "avf": Field((bool,)),
    "known_findings": Field((dict,)),
    "el2_holder": Field((str,), choices=EL2_HOLDERS),
}

_BOARD_SCHEMA = {
    "name": Field((str,), required=True),
    "description": Field((str,)),
    "soc": Field((str,), required=True),
    "kind": Field((str,), required=True, choices=BOARD_KINDS),
    "env": Field((str,), required=True),
    "image_set": Field((str,)),
    "kernel_args": Field((str,)),
    "boot_timeout": Field((int, float)),
    "ready_state": Field((str,)),
    "expect": Field((dict,), required=True, schema=_EXPECT_SCHEMA),
}


@dataclass(frozen=True)
class Expectations:
    boot_el: str
    kvm_mode: str
    pvm: bool
    avf: bool = False
    # "<probe>/<vm>" -> why: a failure of that pvm check is a documented finding on this
    # board (reported as xfail with the measured values), not a new regression.
    known_findings: tuple = ()
    el2_holder: str = None      # expected firmware hypervisor at EL2 ("none": no EL2); None: not checked

    def known_finding(self, probe, vm):
        return dict(self.known_findings).get(f"{probe}/{vm}")

    @property
    def dev_kvm(self):
        """/dev/kvm must exist exactly when KVM initialised at EL2."""
        return self.kvm_mode != "none"

    def kvm_mode_matches(self, measured):
        if self.kvm_mode == "protected":
            return measured is not None and measured.startswith("protected-")
        return measured == self.kvm_mode


@dataclass(frozen=True)
class Board:
    name: str
    path: Path
    soc: str
    kind: str
    env: Path
    expect: Expectations
    description: str = ""
    image_set: str = None
    kernel_args: str = ""
    boot_timeout: float = 60.0
    ready_state: str = "shell"

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
    problems = check_fields(path, data, _BOARD_SCHEMA)
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
    expect = data.get("expect")
    if isinstance(expect, dict) and isinstance(expect.get("known_findings"), dict):
        findings = expect["known_findings"]
        valid = [f"{p}/{v}" for p in PROBES for v in VM_TYPES]
        for key, why in findings.items():
            where = f"{path}:{findings.line_of(key)}: expect.known_findings.{key}"
            if key not in valid:
                problems.append(f"{where}: not a pvm check; valid: {', '.join(valid)}")
            if not isinstance(why, str) or not why.strip():
                problems.append(f"{where}: give the reason as text")
    raise_if_problems(path, problems)
    return Board(
        name=data["name"], path=path, soc=data["soc"], kind=data["kind"], env=env_path,
        description=data.get("description", ""), image_set=data.get("image_set"),
        kernel_args=data.get("kernel_args", ""), boot_timeout=float(timeout),
        ready_state=data.get("ready_state", "shell"),
        expect=Expectations(boot_el=expect["boot_el"], kvm_mode=expect["kvm_mode"],
                            pvm=expect["pvm"], avf=expect.get("avf", False),
                            known_findings=tuple(sorted((expect.get("known_findings") or {}).items())),
                            el2_holder=expect.get("el2_holder")),
    )


def load_board(name_or_path, root=None):
    """A board by name (``boards/<name>.yaml``) or by path to its file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        return load_board_file(candidate, root)
    path = boards_dir(root) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UnknownNameError("board", name_or_path, known_boards(root), where=str(boards_dir(root)))
    return load_board_file(path, root)
