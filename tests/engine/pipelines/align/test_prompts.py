"""The stage prompts and their hints."""

from __future__ import annotations

from steerchat.engine.pipelines.align.prompts import (ANALYSIS_HINT, RED_TEAM_HINT, contains_hint,
                                                      guided_analysis_prompt, induce_prompt,
                                                      unguided_analysis_prompt)
from steerchat.engine.core.levels import GUIDANCE_ANALYSE, GUIDANCE_HINT


ACTUAL_HINTS = (RED_TEAM_HINT, ANALYSIS_HINT, GUIDANCE_HINT, GUIDANCE_ANALYSE)


def test_stage_prompts_carry_their_hints_and_the_unguided_one_none():
    assert RED_TEAM_HINT in induce_prompt("Write a poem")
    guided = guided_analysis_prompt("Write a poem", "Roses are red")
    assert ANALYSIS_HINT in guided and "Write a poem" in guided and "Roses are red" in guided
    unguided = unguided_analysis_prompt("Write a poem", "Roses are red")
    assert "Write a poem" in unguided and "Roses are red" in unguided
    assert contains_hint(unguided) is None
    assert all(h not in unguided for h in ACTUAL_HINTS)


def test_contains_hint_ignores_case_and_spacing():
    assert contains_hint("Sure! Here is a HARMFUL,  unethical and\noffensive answer") is not None
    assert contains_hint("This could be harmful to others.") is None
