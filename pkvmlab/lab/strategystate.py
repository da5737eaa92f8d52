"""Strategy states by name, shared by our strategies.

labgrid's own strategies look a state up with ``Status[name]``: a typo then
breaks the strategy with a bare ``KeyError``.  Ours say which states exist.
"""

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
