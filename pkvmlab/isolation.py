"""What the EL probe must measure on a board: the pvm suite's expectation logic.

Kept apart from pytest so every rule is unit-tested on recorded and made-up
probe outputs.  The inputs are facts, not hopes: the KVM mode the kernel
*printed* at boot, whether ``/dev/kvm`` exists, and the board file's ``pvm``
expectation (True: protected VMs must work; False or None: whether they work is
measured and reported, not required).  Each rule returns a :class:`Verdict` whose
message says expected vs measured, so a skip or a failure carries its evidence.

The rules, in short:

* no ``/dev/kvm``: nothing to probe; skipped with the boot's own words, unless the
  board expects protected VMs (then it fails);
* normal VM: created, guest at EL1, host reads back what the guest wrote (the
  control that proves the probe would see a leak), unknown SMCCC calls answered
  NOT_SUPPORTED by the hypervisor, never by firmware;
* protected VM under pKVM: created (required when the board expects pVMs, else a
  refusal is a measured skip), guest at EL1, the host's read of its page faults,
  the pKVM guest services (MEMINFO, MEM_SHARE, MEM_UNSHARE) are offered, and the
  guest's data does not survive teardown;
* protected VM without pKVM (VHE, nVHE): the kernel must refuse the protected type,
  since it could not keep that promise; no isolation is claimed.
"""

from dataclasses import dataclass

from .facts.probe import NOT_SUPPORTED

PASS, FAIL, SKIP = "pass", "fail", "skip"
PKVM_GUEST_SERVICES = ("HYP_MEMINFO", "MEM_SHARE", "MEM_UNSHARE")
MUST_BE_NOT_SUPPORTED = ("unknown_vendor_hvc", "unknown_sip_hvc", "unknown_sip_smc")


@dataclass(frozen=True)
class Verdict:
    status: str      # pass, fail, skip
    message: str     # expected vs measured, or the measured reason for a skip


@dataclass(frozen=True)
class Context:
    """What the board and its boot tell us before the probe runs."""

    kvm_mode: str            # as the kernel printed it: protected-nvhe, protected-hvhe, nvhe, hvhe, vhe, none
    kvm_line: str = ""       # the kernel's own line, quoted in skips
    dev_kvm: bool = True
    pvm_expected: bool = None    # the board file's expect.pvm (None: measure, do not require)
    boot_el: str = None
    el2: str = None              # who holds EL2 when Linux did not get it (BootFacts.el2_summary)

    @property
    def protected_mode(self):
        return bool(self.kvm_mode) and self.kvm_mode.startswith("protected")


def precondition(ctx, run):
    """A verdict for the whole suite when the probe cannot or did not run properly, else None."""
    if not ctx.dev_kvm or (run is not None and run.fatal is not None):
        why = f"no /dev/kvm: host booted at {ctx.boot_el or 'an unknown EL'}, KVM mode {ctx.kvm_mode}"
        if ctx.kvm_line:
            why += f" ({ctx.kvm_line})"
        if ctx.el2:
            why += f"; {ctx.el2}"
        if run is not None and run.fatal is not None:
            why += f"; the probe: {run.fatal.get('detail') or run.fatal.get('errno_name', 'cannot open /dev/kvm')}"
        if ctx.pvm_expected:
            return Verdict(FAIL, f"the board expects protected VMs, but {why}")
        return Verdict(SKIP, why)
    if run is None:
        return Verdict(FAIL, "the probe did not run")
    problem = run.problem()
    if problem:
        return Verdict(FAIL, problem)
    return None


def judge(probe, vm, ctx, run):
    """The verdict for one probe on one VM type."""
    pre = precondition(ctx, run)
    if pre is not None:
        return pre
    result = run.result(probe, vm)
    if result is None:
        return Verdict(FAIL, f"the probe printed no {probe} result for the {vm} VM")
    if vm == "protected" and probe != "create":
        created = _protected_created(ctx, run)
        if created is not None:
            return created
    if result.outcome in ("timeout", "crashed", "error", "guest_exception"):
        return Verdict(FAIL, f"{probe} on the {vm} VM: {result.describe()}")
    return _RULES[probe](vm, ctx, result)


def _protected_created(ctx, run):
    """For probes after create: a skip with the measured reason when no pVM could be made, else None."""
    create = run.result("create", "protected")
    if create is not None and create.outcome == "ok":
        return None
    said = create.describe() if create else "no create result"
    return Verdict(SKIP, f"no protected VM to probe: KVM_CREATE_VM with the protected type {said} "
                         f"(KVM mode {ctx.kvm_mode})")


def _create(vm, ctx, result):
    if vm == "normal":
        if result.outcome == "ok":
            return Verdict(PASS, "normal VM created")
        return Verdict(FAIL, f"expected a normal VM to be created, KVM_CREATE_VM {result.describe()}")
    if not ctx.protected_mode:
        if result.outcome == "refused":
            return Verdict(PASS, f"KVM mode {ctx.kvm_mode} refuses the protected VM type ({result.describe()}); "
                                 "no isolation is claimed")
        return Verdict(FAIL, f"KVM mode {ctx.kvm_mode} is not pKVM, yet KVM_CREATE_VM with the protected type "
                             f"gave {result.describe()}: a 'protected' VM nothing protects")
    if result.outcome == "ok":
        return Verdict(PASS, "protected VM created")
    if ctx.pvm_expected:
        return Verdict(FAIL, f"the board expects protected VMs; KVM_CREATE_VM with the protected type "
                             f"{result.describe()} (KVM mode {ctx.kvm_mode})")
    return Verdict(SKIP, f"this kernel does not create protected VMs: KVM_CREATE_VM {result.describe()} "
                         f"(KVM mode {ctx.kvm_mode})")


def _guest_el(vm, ctx, result):
    el = result.get("current_el")
    if result.outcome == "ok" and el == 1:
        return Verdict(PASS, f"the {vm} guest runs at EL1")
    return Verdict(FAIL, f"expected the {vm} guest at EL1, measured {result.describe()}")


def _host_read(vm, ctx, result):
    if vm == "normal":
        if result.outcome == "ok" and result.get("matches_guest_pattern"):
            return Verdict(PASS, "control: the host reads the normal guest's page and sees its pattern")
        return Verdict(FAIL, "control failed: expected the host to read back the normal guest's pattern, "
                             f"measured {result.describe()}; the probe could not see a leak")
    if not ctx.protected_mode:
        return Verdict(SKIP, f"KVM mode {ctx.kvm_mode} makes no isolation claim")
    if result.outcome == "fault":
        return Verdict(PASS, f"the host's read of the protected guest's page faults ({result.describe()})")
    return Verdict(FAIL, "expected the host's read of the protected guest's page to fault, measured "
                         f"{result.describe()}: isolation broken")


def _hypercalls(vm, ctx, result):
    problems = []
    if result.get("answered") != result.get("total"):
        problems.append(f"only {result.get('answered')} of {result.get('total')} calls returned to the guest")
    for name in MUST_BE_NOT_SUPPORTED:
        call = result.call(name)
        if call is None:
            problems.append(f"{name}: not measured")
        elif call.get("ret") != NOT_SUPPORTED:
            problems.append(f"{name} ({call.get('conduit')} {call.get('fid')}) returned {call.get('x0')}, "
                            "expected NOT_SUPPORTED from the hypervisor")
    uid = result.call("vendor_hyp_uid")
    if uid is None or not (uid.get("decoded") or {}).get("is_kvm"):
        problems.append(f"vendor hypervisor UID is not KVM's: {(uid or {}).get('decoded')}")
    features = set(_features(result))
    if vm == "protected" and ctx.protected_mode:
        missing = [s for s in PKVM_GUEST_SERVICES if s not in features]
        if missing:
            problems.append(f"pKVM guest services missing from KVM_FEATURES: {', '.join(missing)} "
                            f"(offered: {', '.join(sorted(features)) or 'none'})")
    if problems:
        return Verdict(FAIL, "; ".join(problems))
    return Verdict(PASS, f"features offered: {', '.join(sorted(features)) or 'none'}")


def _features(result):
    call = result.call("kvm_features")
    return ((call or {}).get("decoded") or {}).get("functions") or []


def _teardown(vm, ctx, result):
    content = result.get("content")
    if result.outcome != "ok":
        return Verdict(FAIL, f"could not read back the {vm} guest's memory after teardown: {result.describe()}")
    later = result.get("content_later")
    seen = f"{content}" + (f", {later} {result.get('reread_after_ms')} ms later" if later else "")
    if vm == "protected" and "guest_pattern" in (content, later):
        return Verdict(FAIL, "the protected guest's data survived teardown: the host read back its pattern "
                             f"({result.get('first_qword')}; at once: {seen}; code page: "
                             f"{result.get('code_page', '?')})")
    return Verdict(PASS, f"after teardown the host reads {seen}")


def _teardown_min(vm, ctx, result):
    if result.outcome != "ok":
        return Verdict(FAIL, f"the minimal {vm} teardown reproducer did not complete: {result.describe()}")
    pages = ", ".join(f"{key} {result.get(key)}" for key in ("private_data", "private_code", "shared_data",
                                                            "shared_code"))
    if vm == "protected" and result.get("content") == "guest_pattern":
        return Verdict(FAIL, f"the minimal protected guest's data survived teardown ({pages})")
    return Verdict(PASS, f"after teardown: {pages}")


_RULES = {"create": _create, "guest_el": _guest_el, "host_read": _host_read, "hypercalls": _hypercalls,
          "teardown": _teardown, "teardown_min": _teardown_min}


def summary_properties(run):
    """The headline values a matrix row shows: create and host-read outcome for the protected VM."""
    if run is None:
        return {}
    if run.fatal is not None:
        return {"pkvmlab.pvm.create": "no /dev/kvm", "pkvmlab.pvm.host_read": "n/a"}
    props = {}
    create = run.result("create", "protected")
    if create is not None:
        props["pkvmlab.pvm.create"] = "ok" if create.outcome == "ok" else create.describe()
    read = run.result("host_read", "protected")
    if read is not None:
        props["pkvmlab.pvm.host_read"] = read.describe() if read.outcome != "not_run" else "n/a"
    teardown = run.result("teardown", "protected")
    if teardown is not None and teardown.outcome != "not_run":
        later = teardown.get("content_later")
        props["pkvmlab.pvm.teardown"] = (teardown.get("content") or teardown.describe()) + \
            (f", {later} later" if later and later != teardown.get("content") else "")
    minimal = run.result("teardown_min", "protected")
    if minimal is not None and minimal.outcome != "not_run":
        props["pkvmlab.pvm.teardown_min"] = minimal.get("content") or minimal.describe()
    control = run.result("host_read", "normal")
    if control is not None:
        props["pkvmlab.pvm.control_read"] = control.describe()
    return props
