"""Simulators for pkvmlab's own tests (no device is touched): see :mod:`pkvmlab.sim.pixel`."""
