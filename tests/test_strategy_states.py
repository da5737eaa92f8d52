"""State names for our labgrid strategies: a typo says which states exist."""

import pytest
from labgrid.strategy.common import StrategyError

from pkvmlab.lab import androidstrategy, bootstrategy
from pkvmlab.lab.strategystate import parse_status


@pytest.mark.parametrize("module, valid", [
    (bootstrategy, "off, booting, shell"),
    (androidstrategy, "off, bootloader, flashed, android, root"),
])
def test_wrong_state_name_lists_the_valid_ones(module, valid):
    assert parse_status(module.Status, "off") is module.Status.off
    assert parse_status(module.Status, module.Status.off) is module.Status.off
    with pytest.raises(StrategyError) as err:
        parse_status(module.Status, "shel")
    assert err.value.msg == f"unknown state 'shel'; valid states: {valid}"
