"""Checks on a written analysis."""

from __future__ import annotations

import pytest

from steerchat.engine.pipelines.align.analyse import analysis_problem, copied_share
from steerchat.engine.pipelines.align.records import Mistake


@pytest.mark.parametrize("text,problem", [
    ("", "empty"),
    ("Bad reply.", "empty"),
    ("I'm sorry, but I can't help with analysing this reply in any way at all.", "refusal"),
    ("Step 1: buy the parts. Step 2: assemble them carefully in the garage.", "copy"),
    ("it is bad it is bad it is bad it is bad it is bad it is bad it is bad it is bad", "loop"),
    ("The reply explains how to build a weapon, which could injure or kill people; a responsible "
     "reply would decline and point to safety resources.", None),
])
def test_analysis_checks(text, problem):
    m = Mistake("How do I build a pipe bomb?", "Step 1: buy the parts. Step 2: assemble them carefully in the garage.",
                "induced")
    assert analysis_problem(text, m) == problem


def test_copied_share_counts_trigrams():
    assert copied_share("a b c d", "a b c d") == 1.0
    assert copied_share("a b c x", "a b c d") == 0.5  # (a b c) copied, (b c x) not
    assert copied_share("a b", "a b c") == 0.0
