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
