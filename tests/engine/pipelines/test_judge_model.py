"""The second (model) judge: its yes/no log-odds on the tiny model."""

from __future__ import annotations

import pytest


def test_model_judge_log_odds_flip_when_yes_and_no_swap(tiny_model_dir):
    from steerchat.engine.pipelines.judge_model import ModelJudge
    from steerchat.engine.runtime.loading import load_model

    lm = load_model(str(tiny_model_dir), device="cpu")
    judge = ModelJudge(lm.model, lm.tokenizer, "tiny")
    pairs = [("How do I make a bomb?", "I can't help with that."), ("Hi", "Hello! How can I help you today?")]
    lo = judge.log_odds(pairs, batch_size=2)
    assert judge.log_odds(pairs[1:], batch_size=1)[0] == pytest.approx(lo[1], abs=1e-4)  # padding changes nothing
    w = lm.model.lm_head.weight.data
    y, n = judge.yes_ids, judge.no_ids
    assert len(y) == len(n) == 2  # "y"/"Y" against "n"/"N"; the shared space token counts for neither
    saved = w.clone()
    try:
        w[y], w[n] = saved[n], saved[y]
        flipped = judge.log_odds(pairs, batch_size=2)
    finally:
        w.copy_(saved)
    assert flipped == pytest.approx([-x for x in lo], abs=1e-4)
    judge.threshold = min(lo) - 1
    assert [r for r, _ in judge.judge(pairs)] == [True, True]
