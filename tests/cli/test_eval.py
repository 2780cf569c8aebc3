"""`steerchat eval` flags."""

from __future__ import annotations

import pytest


def test_limit_flag_takes_one_number_or_one_per_kind():
    import argparse

    from steerchat.cli.eval import DEFAULT_LIMITS, _limits

    assert _limits("7") == {k: 7 for k in DEFAULT_LIMITS}
    assert _limits("unsafe=0, safe=100") == {"unsafe": 0, "safe": 100}
    assert _limits("5,mc=2") == {**{k: 5 for k in DEFAULT_LIMITS}, "mc": 2}
    for bad in ("lots", "unsafe=many", "harmful=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="KIND=N"):
            _limits(bad)


@pytest.mark.parametrize("argv", [
    ["steerchat", "eval", "--fit-gate", "-m", "qwen2.5-coder-0.5b", "--sets", "unsafe"],
    ["/usr/bin/steerchat", "eval", "-m", "qwen2.5-coder-0.5b", "--fit-gate", "--sets", "unsafe"],
])
def test_the_recorded_gate_command_is_the_one_typed(argv):
    from steerchat.cli.eval import gate_command

    got = gate_command(argv)
    assert got.startswith("steerchat eval ") and got.count("--fit-gate") == 1
    assert "-m qwen2.5-coder-0.5b" in got and got.endswith("--sets unsafe")
