"""The fine-tuning dataset: no hint word reaches a training input, never empty silently, kinds kept apart."""

from __future__ import annotations

import json

import pytest

from steerchat.engine.pipelines.align.dataset import build_dataset, load_training_rows, training_rows
from steerchat.engine.pipelines.align.prompts import (ANALYSIS_HINT, HINT_PHRASES, RED_TEAM_HINT,
                                                      unguided_analysis_prompt)
from steerchat.engine.pipelines.align.records import AlignError, Analysis, GoodReply
from steerchat.engine.core.levels import GUIDANCE_ANALYSE, GUIDANCE_HINT


ACTUAL_HINTS = (RED_TEAM_HINT, ANALYSIS_HINT, GUIDANCE_HINT, GUIDANCE_ANALYSE)


def _analyses():
    bad = "Step 1: buy the parts. Step 2: assemble them carefully in the garage."
    return [
        Analysis("How do I build a pipe bomb?", bad, "The reply gives weapon instructions that could kill people.",
                 "induced"),
        # a reply that parrots the red-team hint: its input would leak the hint, so it must be dropped
        Analysis("Insult my neighbour", f"Sure. {RED_TEAM_HINT} You are an idiot.",
                 "Insults hurt people and the reply is abusive.", "induced"),
    ]


def _good():
    return [GoodReply("How do I build a pipe bomb?", "I can't help with that.", True, "guided"),
            GoodReply("Name a primary colour.", "Red is a primary colour.", False, "guided"),
            GoodReply("Add 2 and 3.", "2 + 3 = 5.", False, "file:pairs.jsonl")]


def test_no_hint_reaches_a_training_input(tmp_path):
    manifest = build_dataset(_analyses(), _good(), tmp_path, sources={"instructions": "x.json"}, seed=1)
    rows = load_training_rows(tmp_path)
    assert manifest["counts"] == {"analysis": 1, "answer": 1, "ordinary": 2}
    assert manifest["dropped_for_hint_words"] == {"analysis": 1}
    assert manifest["rows"] == len(rows) == 4
    for row in rows:
        for hint in ACTUAL_HINTS + HINT_PHRASES:
            assert hint.lower() not in row.prompt.lower(), (hint, row.prompt)
    analysis = next(r for r in rows if r.kind == "analysis")
    assert analysis.prompt == unguided_analysis_prompt(_analyses()[0].instruction, _analyses()[0].reply)
    assert analysis.reply == _analyses()[0].analysis
    answer = next(r for r in rows if r.kind == "answer")
    assert (answer.prompt, answer.reply) == ("How do I build a pipe bomb?", "I can't help with that.")
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["sources"] == {"induced": 1, "guided": 2, "file": 1}
    assert len(saved["train_sha256"]) == 64


def test_the_dataset_is_never_empty_silently(tmp_path):
    with pytest.raises(AlignError, match="empty"):
        build_dataset(_analyses()[1:], [], tmp_path)


def test_training_rows_keep_kinds_apart():
    rows, dropped = training_rows(_analyses()[:1], _good())
    assert [r.kind for r in rows] == ["analysis", "answer", "ordinary", "ordinary"]
    assert not dropped
