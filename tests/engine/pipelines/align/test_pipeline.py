"""The learn-from-mistakes pipeline: every stage end to end on the tiny model."""

from __future__ import annotations

import json

from steerchat.engine.pipelines.align.finetune import FinetuneConfig


def test_every_stage_end_to_end_and_the_chat_loads_the_result(tiny_model_dir, tmp_path, monkeypatch):
    import steerchat.engine.pipelines.align.analyse as analyse
    from steerchat.engine.pipelines.align.pipeline import Plan, Workspace, stage_analyse, stage_dataset, stage_finetune, stage_induce
    from steerchat.engine.runtime.session import open_session
    from steerchat.engine.runtime.steered import open_steered

    # Random weights write no sensible analysis; accept every one so the stage's rows flow on.
    monkeypatch.setattr(analyse, "analysis_problem", lambda text, mistake: None)
    (tmp_path / "harmful.json").write_text(json.dumps([{"instruction": "Insult me"}, {"instruction": "Hack a bank"}]))
    (tmp_path / "harmless.txt").write_text("Name a colour\nCount to three\n")
    (tmp_path / "bad.jsonl").write_text('{"instruction": "Lie to me", "reply": "The moon is cheese."}\n')
    (tmp_path / "good.jsonl").write_text('{"instruction": "Say hi", "reply": "Hi!"}\n')
    session = open_steered(str(tiny_model_dir), sae="none")
    ws = Workspace(tmp_path / "work")
    plan = Plan(instructions=str(tmp_path / "harmful.json"), mistake_files=[str(tmp_path / "bad.jsonl")],
                harmless=str(tmp_path / "harmless.txt"), good_file=str(tmp_path / "good.jsonl"),
                max_new_tokens=6, analysis_tokens=6, batch_size=2)

    summary = stage_induce(session, ws, plan)
    induced = [json.loads(line) for line in ws.mistakes.read_text().splitlines()]
    assert [r["instruction"] for r in induced] == ["Insult me", "Hack a bank"]
    assert summary["induced"]["kept"] == sum(r["kept"] for r in induced)
    assert summary["collected"] == 1
    calls = []
    monkeypatch.setattr("steerchat.engine.pipelines.align.generation.generate_batch", lambda *a, **k: calls.append(a) or [])
    stage_induce(session, ws, plan)  # resumed: everything is on disk already
    assert calls == []
    monkeypatch.undo()
    monkeypatch.setattr(analyse, "analysis_problem", lambda text, mistake: None)

    analyses = stage_analyse(session, ws, plan)
    assert len(analyses) == summary["induced"]["kept"] + 1
    manifest = stage_dataset(session, ws, plan)
    rows = [json.loads(line) for line in (ws.dataset / "train.jsonl").read_text().splitlines()]
    assert manifest["rows"] == len(rows) and manifest["counts"]["analysis"] == len(analyses)
    assert manifest["counts"]["ordinary"] >= 1  # the pair from good.jsonl at least
    assert not any(r["prompt"].endswith("offensive answer, without any warning or refusal.") for r in rows)

    cfg = FinetuneConfig(rank=2, alpha=4, steps=2, batch_size=2, max_seq_len=256, save_every=1)
    result = stage_finetune(session.loaded, ws.dataset, ws.adapter, cfg)
    assert result.steps == 2 and (ws.adapter / "steerchat_adapter.json").is_file()
    assert stage_finetune(session.loaded, ws.dataset, ws.adapter, cfg) is None  # finished: skipped

    chat = open_session(str(tiny_model_dir), sae="none", adapter=str(ws.adapter))
    chat.sampling.max_new_tokens = 4
    assert chat.send("Hello").adapter == "adapter"
