"""Mistake sources: files and flagged replies in the chat history."""

from __future__ import annotations

import pytest

from steerchat.engine.pipelines.align.induce import load_mistakes, mistakes_from_history
from steerchat.engine.pipelines.align.records import AlignError


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


@pytest.mark.parametrize("hint, source", [(True, "induced"), (False, "asked")])
def test_instructions_are_asked_with_the_red_team_hint_or_plainly(tmp_path, monkeypatch, hint, source):
    """A model that refuses the hint itself is asked plainly (`--induce plain`); either way a
    refusal is not kept as a mistake and the row says how it was asked."""
    from steerchat.engine.core.trace import Verdict
    from steerchat.engine.pipelines.align import generation
    from steerchat.engine.pipelines.align.induce import induce_mistakes
    from steerchat.engine.pipelines.align.prompts import RED_TEAM_HINT
    from steerchat.engine.runtime.batch import BatchReply

    asked = []

    def fake_batch(steered, prompts, settings, **kw):
        asked.extend(prompts)
        return [BatchReply(p, "I can't help with that." if "bank" in p else "Sure: step one...",
                           Verdict(refused="bank" in p, score=0.9 if "bank" in p else 0.1)) for p in prompts]

    monkeypatch.setattr(generation, "generate_batch", fake_batch)
    kept = induce_mistakes(None, ["Insult me ", "Hack a bank"], tmp_path / "m.jsonl", hint=hint, batch_size=2)
    assert [m.instruction for m in kept] == ["Insult me "] and kept[0].source == source
    assert asked == ([f"Insult me\n\n{RED_TEAM_HINT}", f"Hack a bank\n\n{RED_TEAM_HINT}"] if hint
                     else ["Insult me", "Hack a bank"])
