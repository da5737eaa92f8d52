"""AVF support on an Android board: the bootloader's hypervisor properties, /dev/kvm and ``vm info``.

The bootloader passes ``androidboot.hypervisor.{version,vm.supported,protected_vm.supported}``,
init turns them into ``ro.boot.*`` (AVF ``docs/abl.md``); on pKVM the version is
``kvm.arm-protected``.  ``vm info`` must tell the same story.
"""

import pytest
from avf_facts import VM, android_bool, parse_vm_info

pytestmark = pytest.mark.board(console="adb")


def _prop(booted, name):
    lines, _ = booted.run(f"getprop {name}")
    return lines[0].strip() if lines else ""


def test_hypervisor_properties(booted, board, measured):
    vm = _prop(booted, "ro.boot.hypervisor.vm.supported")
    pvm = _prop(booted, "ro.boot.hypervisor.protected_vm.supported")
    version = _prop(booted, "ro.boot.hypervisor.version")
    for key, value in (("vm_supported", vm), ("protected_vm_supported", pvm), ("hypervisor_version", version)):
        measured(key, value or "(unset)")
    if board.expect.avf:
        assert android_bool(vm) or android_bool(pvm), (
            f"expected AVF: ro.boot.hypervisor.vm.supported={vm!r}, protected_vm.supported={pvm!r}")
    if board.expect.pvm:
        assert android_bool(pvm) is True, f"expected protected VMs: ro.boot.hypervisor.protected_vm.supported={pvm!r}"
        assert version.startswith("kvm"), (
            f"expected pKVM (ro.boot.hypervisor.version kvm.arm-protected), got {version!r}: "
            "another hypervisor (e.g. gunyah) holds EL2")
    else:
        assert android_bool(pvm) is not True, f"board expects no protected VMs, yet protected_vm.supported={pvm!r}"


def test_dev_kvm(booted, board):
    lines, _ = booted.run("if [ -e /dev/kvm ]; then echo present; else echo absent; fi")
    expected = "present" if board.expect.dev_kvm else "absent"
    assert lines == [expected], f"expected /dev/kvm {expected}, measured {lines}"


def test_vm_info(booted, board, measured):
    lines, code = booted.run(f"{VM} info")
    (booted.run_dir / "vm-info.txt").write_text("\n".join(lines) + "\n")
    assert code == 0, f"'vm info' exited {code}: {lines}"
    info = parse_vm_info(lines)
    measured("protected", info.protected)
    measured("hypervisor_version", info.hypervisor_version)
    assert info.protected is not None, f"'vm info' printed no support line: {lines}"
    assert info.protected == board.expect.pvm, (
        f"expected protected VMs {'supported' if board.expect.pvm else 'unsupported'}; vm info says {lines[0]!r}")
    assert info.dev_kvm == board.expect.dev_kvm, f"vm info: /dev/kvm {'exists' if info.dev_kvm else 'missing'}"
    version = _prop(booted, "ro.boot.hypervisor.version")
    assert info.hypervisor_version == (version or None), (
        f"vm info says hypervisor {info.hypervisor_version!r}, ro.boot.hypervisor.version is {version!r}")
