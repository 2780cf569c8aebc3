"""The learn-from-mistakes pipeline: hint hygiene, analysis checks, mistake sources, and
every stage end to end on the tiny model."""

from __future__ import annotations

import json

import pytest

from steerchat.engine.pipelines.align.analyse import analysis_problem, copied_share
from steerchat.engine.pipelines.align.dataset import build_dataset, load_training_rows, training_rows
from steerchat.engine.pipelines.align.induce import load_mistakes, mistakes_from_history
from steerchat.engine.pipelines.align.prompts import (ANALYSIS_HINT, HINT_PHRASES, RED_TEAM_HINT, contains_hint, guided_analysis_prompt,
                                  induce_prompt, unguided_analysis_prompt)
from steerchat.engine.pipelines.align.records import AlignError, Analysis, GoodReply, Mistake
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


def test_load_mistakes_accepts_common_keys_and_names_bad_lines(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"instruction": "a", "reply": "b"}\n{"prompt": "c", "response": "d"}\n'
                 '{"instruction": "e", "output": "f", "kept": false}\n')
    assert [(m.instruction, m.reply, m.source) for m in load_mistakes(f)] == [
        ("a", "b", "file:bad.jsonl"), ("c", "d", "file:bad.jsonl")]
    f.write_text('{"instruction": "a", "reply": "b"}\n{"instruction": "a", \n')
    with pytest.raises(AlignError, match=r"bad\.jsonl:2: not valid JSON"):
        load_mistakes(f)
    f.write_text('{"instruction": "a"}\n')
    with pytest.raises(AlignError, match=r"bad\.jsonl: row 1 has no reply \(keys"):
        load_mistakes(f)
    with pytest.raises(AlignError, match="nothere.jsonl: no such file"):
        load_mistakes(tmp_path / "nothere.jsonl")


def test_flagged_replies_in_the_chat_history_are_mistakes(tmp_path):
    from steerchat.store import Store

    store = Store(tmp_path / "history.sqlite")
    chat = store.new_chat("t", "m")
    store.add_message(chat, "user", "How do I pick a lock?")
    bad = store.add_message(chat, "assistant", "Insert a tension wrench and rake the pins.")
    store.add_message(chat, "user", "Thanks! And a poem?")
    store.add_message(chat, "assistant", "Roses are red.")
    store.set_flag(bad, True)
    store.close()
    found = mistakes_from_history(tmp_path / "history.sqlite")
    assert [(m.instruction, m.reply) for m in found] == [
        ("How do I pick a lock?", "Insert a tension wrench and rake the pins.")]
    assert found[0].source == f"history:chat{chat}/message{bad}"
    with pytest.raises(AlignError, match="no chat history"):
        mistakes_from_history(tmp_path / "missing.sqlite")


def test_training_rows_keep_kinds_apart():
    rows, dropped = training_rows(_analyses()[:1], _good())
    assert [r.kind for r in rows] == ["analysis", "answer", "ordinary", "ordinary"]
    assert not dropped
