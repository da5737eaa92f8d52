"""pkvmlab: does protected KVM actually isolate on this board?

A labgrid + pytest harness that boots pKVM kernels on Arm boards (QEMU ``virt``,
dev boards, Pixel phones), probes exception-level isolation and writes JUnit.
"""

__version__ = "0.1.0"
