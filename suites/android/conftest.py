"""Fixtures of the android suite: which hypervisor holds EL2 on the phone.

A phone whose firmware hypervisor keeps EL2 (Qualcomm's Gunyah, MediaTek's
GenieZone) still offers AVF's protected VMs, but they are that hypervisor's,
not pKVM's: the pKVM checks do not apply there and are skipped with the line
that says so, read from the kernel log or from AVF's own property
(``ro.boot.hypervisor.version``; pkvmlab/facts/el2holder.py).
"""

import pytest

from pkvmlab.facts.el2holder import find_el2_holder


@pytest.fixture(scope="session")
def firmware_hypervisor(booted):
    """The El2Holder of a firmware hypervisor seen on the phone, or None (Linux holds EL2: pKVM)."""
    holder = booted.facts.el2_holder if booted.facts else None
    if holder is not None and holder.name:
        return holder
    lines, _ = booted.run("getprop ro.boot.hypervisor.version")
    value = lines[0].strip() if lines else ""
    holder = find_el2_holder([f"ro.boot.hypervisor.version={value}"]) if value else None
    return holder if holder is not None and holder.name else None

