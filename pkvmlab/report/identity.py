"""The one rule for what a check is called in JUnit: the same board, mode and check, the same name.

Dashboards (GitLab, Allure, junit2html, xunit-viewer) tell tests apart and keep their history by
``(classname, name)`` alone; they ignore the testsuite's name and properties.  So the classname
carries what makes a check a different check, and nothing that changes when the same check runs
again on a newer kernel or emulator:

    <board>.<kvm-arm mode>[.<cpu model>][.kernel-<suite>][.qemu-<source>].<module>

* ``board``: the board file's name (``qemu-virt``); two boards never share a history.
* ``kvm-arm mode``: the ``kvm-arm.mode=`` the kernel was booted with (``protected``, ``nvhe``,
  ``default``, ``none``).
* ``cpu model``: on QEMU boards the ``-cpu`` model without its options (``max``, ``cortex-a72``):
  it decides hVHE or nVHE.
* ``kernel-<suite>``: only when the run boots another Debian suite's kernel than the board's image
  set names (``--kernel-suite sid``, a matrix row): the suite is a channel, not a version.
* ``qemu-<source>``: only when the emulator was chosen instead of the board's default
  (``--qemu host``, a matrix row of emulators).
* ``module``: pytest's classname of the test (``suites.pvm.test_isolation``).

Kernel release and emulator version are not in it: a kernel upgrade is the same check, measured
again (both stay suite properties, and in the suite's name).  The prefix before ``module`` is written
as the suite property ``pkvmlab.identity``, which is how merge, history and the HTML table find the
plain module classname again.
"""

import re

IDENTITY_PROPERTY = "pkvmlab.identity"

_UNSAFE = re.compile(r"[^A-Za-z0-9_+-]")


def _part(text):
    """One dot-free component (dots separate the classname's levels in every viewer)."""
    return _UNSAFE.sub("_", str(text)).strip("_") or "_"


def identity_prefix(board, kvm_arm_mode, cpu=None, kernel_suite=None, qemu=None):
    """``<board>.<mode>[.<cpu model>][.kernel-<suite>][.qemu-<source>]``: see the module docstring.

    ``cpu`` may carry options (``max,pauth-impdef=on``): only the model counts.  ``kernel_suite`` and
    ``qemu`` are given only when they differ from the board's defaults.
    """
    parts = [_part(board), _part(kvm_arm_mode)]
    if cpu:
        parts.append(_part(str(cpu).split(",", 1)[0]))
    if kernel_suite:
        parts.append("kernel-" + _part(kernel_suite))
    if qemu:
        parts.append("qemu-" + _part(qemu))
    return ".".join(parts)


def qualified_classname(prefix, classname):
    """``classname`` under ``prefix`` (unchanged when it is already there)."""
    if not prefix:
        return classname
    if classname == prefix or classname.startswith(f"{prefix}."):
        return classname
    return f"{prefix}.{classname}" if classname else prefix


def plain_classname(prefix, classname):
    """The module classname of a qualified one; None when ``classname`` is not under ``prefix``."""
    if not prefix:
        return None
    if classname == prefix:
        return ""
    if classname.startswith(f"{prefix}."):
        return classname[len(prefix) + 1:]
    return None


def case_key(prefix, classname, name):
    """``(classname, name)`` as a dashboard keys the check: the identity rule applied."""
    return qualified_classname(prefix, classname), name
