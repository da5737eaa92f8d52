"""labgrid parts of ours: drivers and strategies registered with labgrid's target factory.

Importing this package registers them, so an environment file loads them with
``imports: [pkvmlab.lab]`` (labgrid imports modules named there).
"""

# Android: the AndroidDevice resource, AdbDriver, SerialFastbootDriver and AndroidStrategy (standard library +
# labgrid only, so loading them for a QEMU board costs nothing).
from . import adbdriver, androidresource, androidstrategy, bootstrategy, fastbootdriver, qemudriver  # noqa: F401  (registration side effect)  # noqa: F401,E402
