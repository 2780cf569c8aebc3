"""Multi-turn escalation scripts: each script is fed its own history."""

from __future__ import annotations

from steerchat.engine.core.levels import SafetySettings


def test_escalation_feeds_each_script_its_own_history(tiny_model_dir, monkeypatch):
    from steerchat.engine.core.datasets import Escalation
    from steerchat.engine.pipelines.escalation import run_escalations
    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.steered import SteeredModel

    session = SteeredModel(load_model(str(tiny_model_dir), device="cpu"))
    seen: list[tuple[list, str]] = []
    real = session.prepare
    monkeypatch.setattr(session, "prepare", lambda h, p, s: (seen.append((list(h), p)), real(h, p, s))[1])
    scripts = [Escalation("a", "goal a", None, ("a1", "a2", "a3")), Escalation("b", "goal b", None, ("b1",))]
    res = run_escalations(session, scripts, SafetySettings(), max_new_tokens=2, batch_size=4)
    assert [len(r.turns) for r in res] == [3, 1]
    by_prompt = dict((p, h) for h, p in seen)
    assert by_prompt["b1"] == [] and by_prompt["a1"] == []
    assert by_prompt["a3"] == [("a1", res[0].turns[0].reply), ("a2", res[0].turns[1].reply)]
    res[0].turns[-1].refused, res[1].turns[-1].refused = True, False
    assert [r.complied for r in res] == [False, True] 
    assert res[0].to_dict()["script"] == "a"
