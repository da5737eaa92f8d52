"""The run-record contract: what a pkvmlab JUnit file says, defined once.

The plugin writes it, the matrix and every report (merge, history, HTML, Markdown) read it, and the
dashboards (GitLab, Allure, junit2html, xunit-viewer, Jenkins) see it.  Three things make the
contract, and this module is the only place each is spelled out:

* **Identity**: what a check is called, ``(classname, name)``; the rule is ``identity.identity_prefix``
  (re-exported here), its prefix the suite property :data:`IDENTITY`.
* **Property names**: :data:`PROPERTIES`, every ``pkvmlab.*`` testsuite property with what it holds
  (``tests/test_record_contract.py`` checks that a real run writes no other).
* **Outcome kinds**: :data:`KINDS`.  A kind is read from the JUnit *element and its type*
  (``<skipped type="pkvmlab.finding">``), never from a message: messages are for people.

===========  ===============================================  ===========  =========================
kind         JUnit                                            status       counts as
===========  ===============================================  ===========  =========================
pass         no result element                                passed       passed
fail         ``<failure>`` (type ``pkvmlab.<class>``)         failed       failed
finding      ``<failure type="pkvmlab.finding.waived">``      failed       a waived finding, strict
error        ``<error>``                                      error        error
interrupted  ``<error type="pkvmlab.interrupted">``           error        error, the run was stopped
waived       ``<skipped type="pkvmlab.finding">``             xfailed      a known finding, waived
artifact     ``<skipped type="pkvmlab.finding.artifact">``    xfailed      an emulator artifact
skip         ``<skipped>`` (any other type)                   skipped      not applicable here
===========  ===============================================  ===========  =========================

The *status* is the coarse outcome history and counts keep (``runs.passed`` ... ``runs.xfailed``, and
``results.outcome`` in ``history.sqlite``); the kind is the fine one pages and the matrix show.
``pytest.xfail`` (files written before pkvmlab typed its findings) reads as ``waived``.
"""

from dataclasses import dataclass

from .identity import IDENTITY_PROPERTY, case_key, identity_prefix, plain_classname, qualified_classname

__all__ = ["IDENTITY", "identity_prefix", "qualified_classname", "plain_classname", "case_key"]

# -- statuses (the coarse outcome kept in history) -------------------------------------------------
PASSED, FAILED, ERROR, XFAILED, SKIPPED = "passed", "failed", "error", "xfailed", "skipped"
STATUSES = (PASSED, FAILED, ERROR, XFAILED, SKIPPED)

# -- outcome kinds -----------------------------------------------------------------------------------
PASS, FAIL, FINDING, ERROR_KIND, INTERRUPTED, WAIVED, ARTIFACT, SKIP = (
    "pass", "fail", "finding", "error", "interrupted", "waived", "artifact", "skip")


@dataclass(frozen=True)
class KindInfo:
    """One outcome kind: its coarse status, the label a page shows, and whether it is a finding."""

    name: str
    status: str
    label: str
    finding: bool = False    # measured and known: a finding, waived or not


KINDS = {k.name: k for k in (
    KindInfo(PASS, PASSED, "pass"),
    KindInfo(FAIL, FAILED, "FAIL"),
    KindInfo(FINDING, FAILED, "FINDING", finding=True),
    KindInfo(ERROR_KIND, ERROR, "ERROR"),
    KindInfo(INTERRUPTED, ERROR, "INTERRUPTED"),
    KindInfo(WAIVED, XFAILED, "finding (waived)", finding=True),
    KindInfo(ARTIFACT, XFAILED, "emulator artifact", finding=True),
    KindInfo(SKIP, SKIPPED, "skip"),
)}
MISSING = "missing"    # a check a column did not run (not a JUnit outcome)

# -- JUnit types of the result elements ---------------------------------------------------------------
TYPE_PREFIX = "pkvmlab."
FINDING_TYPE = "pkvmlab.finding"                    # <skipped>: a known finding, waived
ARTIFACT_TYPE = "pkvmlab.finding.artifact"          # <skipped>: an emulator artifact, waived
STRICT_FINDING_TYPE = "pkvmlab.finding.waived"      # <failure>: a known finding under --strict-findings
INTERRUPTED_TYPE = "pkvmlab.interrupted"            # <error>: the run was stopped (pkvmlab.outcome.INTERRUPTED)
PYTEST_XFAIL_TYPE = "pytest.xfail"                  # pytest's own, before pkvmlab types it
WAIVED_TYPES = {FINDING_TYPE: WAIVED, ARTIFACT_TYPE: ARTIFACT, PYTEST_XFAIL_TYPE: WAIVED}


def kind_of(tag, junit_type=""):
    """The outcome kind of a testcase whose result element is ``tag`` (None: it has none) of ``junit_type``."""
    junit_type = junit_type or ""
    if tag is None:
        return PASS
    if tag == "failure":
        return FINDING if junit_type == STRICT_FINDING_TYPE else FAIL
    if tag == "error":
        return INTERRUPTED if junit_type == INTERRUPTED_TYPE else ERROR_KIND
    if tag == "skipped":
        return WAIVED_TYPES.get(junit_type, SKIP)
    raise ValueError(f"not a JUnit result element: <{tag}>")


def status_of(kind):
    """The coarse status (passed, failed, error, xfailed, skipped) of ``kind``."""
    return KINDS[kind].status


def failure_class(kind, junit_type):
    """board, configuration, infrastructure, harness or interrupted (``pkvmlab.outcome``) of a failed or
    errored case; None for the rest and for types not written by pkvmlab."""
    if kind == FINDING:
        return "board"       # a waived finding failing in strict mode is the board's
    if status_of(kind) in (FAILED, ERROR) and junit_type.startswith(TYPE_PREFIX):
        return junit_type[len(TYPE_PREFIX):]
    return None


# -- testsuite properties --------------------------------------------------------------------------------
IDENTITY = IDENTITY_PROPERTY
BOARD, SOC, BOARD_KIND = "pkvmlab.board", "pkvmlab.soc", "pkvmlab.board_kind"
KVM_ARM_MODE, RUN_ID, STARTED = "pkvmlab.kvm_arm_mode", "pkvmlab.run_id", "pkvmlab.started"
CONSOLE_LOG = "pkvmlab.console_log"
KERNEL_RELEASE, KERNEL_PACKAGE, KERNEL_SUITE = "pkvmlab.kernel_release", "pkvmlab.kernel_package", \
    "pkvmlab.kernel_suite"
EMULATOR, CPU = "pkvmlab.emulator", "pkvmlab.cpu"
BOOT_EL, KVM_MODE, BOOT_SECONDS = "pkvmlab.boot_el", "pkvmlab.kvm_mode", "pkvmlab.boot_seconds"
INTERRUPTED_BY, STRICT_FINDINGS = "pkvmlab.interrupted", "pkvmlab.strict_findings"

# name -> what it holds.  Names ending in "." are families (pkvmlab.pvm.<probe>: the probe's summary).
PROPERTIES = {
    IDENTITY: "classname prefix of every case: <board>.<mode>[.<cpu>][.kernel-<suite>][.qemu-<source>]",
    BOARD: "board file name", SOC: "the board's SoC", BOARD_KIND: "qemu, devboard, android (files before board facts)",
    "pkvmlab.console": "how the console is reached (board file)", "pkvmlab.power": "how power is switched",
    "pkvmlab.firmware_path": "the boot path through firmware (board file)",
    "pkvmlab.image_delivery": "how images reach the board", "pkvmlab.console_resource": "the console's resource",
    "pkvmlab.firmware": "the firmware the console showed", "pkvmlab.firmware_package": "its Debian package",
    KVM_ARM_MODE: "kvm-arm.mode= the kernel was booted with", RUN_ID: "the run's id (its directory)",
    STARTED: "when the run started, ISO 8601 UTC", CONSOLE_LOG: "the board's log, relative to the JUnit file",
    EMULATOR: "qemu-<version> on QEMU boards", "pkvmlab.emulator_version": "QEMU's --version line",
    "pkvmlab.emulator_source": "host, a Debian suite or a path", "pkvmlab.emulator_package": "Debian package",
    CPU: "QEMU -cpu, with its options", "pkvmlab.kernel_image_sha256": "measured sha256 of the booted kernel",
    KERNEL_PACKAGE: "package and version", KERNEL_SUITE: "Debian suite the kernel came from",
    "pkvmlab.initramfs_sha256": "sha256 of the initramfs", "pkvmlab.image_set": "images/<set>.yaml",
    STRICT_FINDINGS: "yes under --strict-findings", BOOT_SECONDS: "power-on to shell",
    KERNEL_RELEASE: "uname -r on the board", BOOT_EL: "EL every CPU started at",
    KVM_MODE: "KVM mode the kernel printed",
    "pkvmlab.kvm_line": "the kernel's KVM line", "pkvmlab.dev_kvm": "yes/no", "pkvmlab.boot_attempts": "boots tried",
    INTERRUPTED_BY: "the signal that ended the run",
    "pkvmlab.place": "the labgrid place the run acquired", "pkvmlab.coordinator": "its coordinator (LG_COORDINATOR)",
    "pkvmlab.health_check": "failed: the board did not boot in another cell, so this one was not run",
    "pkvmlab.pvm.": "the EL probe's summary per check (create, host_read, control_read, teardown)",
}


def known_property(name):
    """Whether ``name`` (a ``pkvmlab.*`` property) is in the contract."""
    return name in PROPERTIES or any(name.startswith(p) for p in PROPERTIES if p.endswith("."))
