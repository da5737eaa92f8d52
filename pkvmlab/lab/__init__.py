"""labgrid parts of ours: drivers and strategies registered with labgrid's target factory.

Importing this package registers them, so an environment file loads them with
``imports: [pkvmlab.lab]`` (labgrid imports modules named there).  The Android
parts (AndroidDevice, AdbDriver, SerialFastbootDriver, AndroidStrategy) need
only labgrid and the standard library, so a QEMU board loads them at no cost.
"""

from . import (  # noqa: F401  (registration side effect)
    adbdriver,
    androidresource,
    androidstrategy,
    bootstrategy,
    fastbootdriver,
    firmwarestrategy,
    linuxshell,
    powerswitch,
    qemudriver,
    serialdriver,
)
