"""LinuxShellDriver: labgrid's ShellDriver, preferred as the CommandProtocol where firmware has a shell too.

Why ours: on a U-Boot board both UBootDriver and ShellDriver provide
CommandProtocol, and labgrid resolves ``get_driver("CommandProtocol")`` only by
class-level ``priorities`` (the env file cannot set them), so the suites'
commands would be ambiguous.  Linux's shell is the one the suites talk to.
"""

import attr
from labgrid.driver.shelldriver import ShellDriver
from labgrid.factory import target_factory
from labgrid.protocol import CommandProtocol


@target_factory.reg_driver
@attr.s(eq=False)
class LinuxShellDriver(ShellDriver):
    priorities = {CommandProtocol: 20}
