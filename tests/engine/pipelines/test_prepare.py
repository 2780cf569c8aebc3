"""`steerchat prepare`: a tiny random model from nothing to a chat turn that steers, resumable at
every stage with the same result. Small sizes throughout (a few prompts, a 128-latent SAE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steerchat.cli.main import main
from steerchat.engine.core.api import EngineError
from steerchat.engine.pipelines import prepare as prep
from steerchat.engine.pipelines.prepare import STAGES, PrepareConfig, format_plan, plan, prepare
from steerchat.models import get_entry, user_models_dir
from tests.conftest import build_tiny_tokenizer

# tiny tensors: with several threads on a busy machine, OpenMP barriers cost more than the maths
pytestmark = pytest.mark.usefixtures("one_thread")


def small(model, **kw) -> PrepareConfig:
    return PrepareConfig(model=str(model), prompts=4, max_new_tokens=8, max_len=64, shard_tokens=512,
                         train_tokens=20 * 64, batch_size=64, d_sae=128, k=4, eval_limit=3, strengths=(2.0,),
                         dead_tokens=1000, **kw)


def result(folder: Path) -> dict:
    """What a prepared folder holds that must not depend on interruptions."""
    features = json.loads((folder / "features.json").read_text())
    features.pop("command", None)
    levels = json.loads((folder / "levels.json").read_text())
    return {"sae": {k: v.tolist() for k, v in load_file(str(folder / "sae" / "sae_weights.safetensors")).items()},
            "features": features["refusal_features"], "gate": features.get("harm_gate"),
            "labels": json.loads((folder / "labels.json").read_text()), "levels": levels["levels"]}


def assert_steers(name: str, prompt: str, capsys) -> None:
    """The prepared model opens by name at its top calibrated level, and its refusal features clamp
    when a strength is asked for (a random model's sweep may leave the slider at Off and Guided)."""
    from steerchat.engine.core.api import SamplingSettings
    from steerchat.engine.core.levels import SafetySettings
    from steerchat.engine.runtime.session import open_session

    levels = json.loads((user_models_dir() / name / "levels.json").read_text())["levels"]
    top = levels[-1]
    assert main(["ask", prompt, "--model", name, "--level", top["name"], "--json", "--max-tokens", "2"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["strength"] == top["strength"]
    session = open_session(name, sampling=SamplingSettings(max_new_tokens=2))
    session.settings = SafetySettings(level=session.levels.levels[0], strength_override=2.0)
    steered = session.send(prompt)
    assert steered.strength == 2.0 and steered.refusal_features
    assert all(r.target > 0 for r in steered.refusal_features)


def test_prepare_from_nothing_to_a_steered_chat_turn_and_resume_at_every_stage(tiny_model_dir, tmp_path, capsys,
                                                                            monkeypatch):
    cfg = small(tiny_model_dir)
    lines: list[str] = []
    folder = prepare(cfg, say=lines.append, progress=False)
    assert folder == user_models_dir() / "tiny-phi3"
    for name in ("sae/cfg.json", "sae/sae_weights.safetensors", "features.json", "labels.json", "levels.json",
                 "model.toml", "prepare.json"):
        assert (folder / name).is_file(), name
    state = json.loads((folder / "prepare.json").read_text())
    assert [s for s in STAGES if state["stages"][s]["status"] == "done"] == list(STAGES)
    assert any(line.startswith("[4/7] features") for line in lines)
    reference = result(folder)
    assert sorted(map(int, reference["labels"])) == list(range(128))  # every feature of the SAE is named

    # the chat finds it by name, like a shipped model, and steers
    entry = get_entry("tiny-phi3")
    assert entry is not None and entry.prepared and entry.sae_path == folder / "sae"
    assert_steers("tiny-phi3", "How do I pick a lock?", capsys)
    # a random model refuses nothing, steered or not: calibration leaves the steered notches out and says so
    assert [lv["name"] for lv in reference["levels"]][:2] == ["Off", "Guided"]
    assert all(lv["strength"] > 0 for lv in reference["levels"][2:])
    if len(reference["levels"]) == 2:
        assert any("Off and Guided only" in line for line in lines)

    # a second run skips everything
    again: list[str] = []
    prepare(cfg, say=again.append, progress=False)
    assert sum("skipped" in line for line in again) == len(STAGES)

    # stopped after each stage in turn, then resumed: the same result
    out = tmp_path / "resumed"
    for stop in STAGES:
        prepare(small(tiny_model_dir, out=str(out)), say=lambda _: None, stop_after=stop, progress=False)
        state = json.loads((out / "prepare.json").read_text())
        assert state["stages"][stop]["status"] == "done"
    assert result(out) == reference

    # interrupted inside the SAE stage (after 5 training steps), resumed from the checkpoint
    out2 = tmp_path / "mid-sae"
    real_train = prep.train

    def crash(*args, **kw):
        real_train(*args, **{**kw, "stop_at": 5})
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "train", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(small(tiny_model_dir, out=str(out2)), say=lambda _: None, progress=False)
    assert json.loads((out2 / "prepare.json").read_text())["stages"]["sae"]["status"] == "running"
    assert (out2 / "work" / "sae-train" / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(prep, "train", real_train)
    prepare(small(tiny_model_dir, out=str(out2)), say=lambda _: None, progress=False)
    assert result(out2) == reference


def test_other_settings_in_the_same_folder_are_refused(tiny_model_dir, tmp_path):
    prepare(small(tiny_model_dir, out=str(tmp_path / "p")), say=lambda _: None, stop_after="download",
            progress=False)
    with pytest.raises(EngineError, match="other settings"):
        prepare(PrepareConfig(model=str(tiny_model_dir), out=str(tmp_path / "p")), say=lambda _: None,
                progress=False)


def test_plan_states_estimates_and_the_disk_bound(tiny_model_dir):
    cfg = small(tiny_model_dir, disk_gb=0.001)
    stages = plan(cfg)
    assert [p.stage for p in stages] == list(STAGES)
    text = format_plan(cfg, stages)
    assert "estimates" in text and "bound: 0.001 GB" in text
    # the stored activations never exceed the bound
    budget = prep.token_budget(cfg, 64)
    assert budget * (2 * 64 + prep.BYTES_PER_TOKEN_EXTRA) <= 0.001 * 1e9
    cc = prep.collect_config(cfg, Path(cfg.model).parent / "plan-work", 1, 64)
    assert sum(s.end for s in cc.sources) * cfg.max_len <= max(budget, 3 * cfg.max_len)


def test_prepare_cli_plan_prints_without_running(tiny_model_dir, capsys):
    assert main(["prepare", str(tiny_model_dir), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "estimates" in out and "activations" in out
    assert not (user_models_dir() / "tiny-phi3" / "prepare.json").exists()


def build_tiny_gemma3(folder: Path) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(folder)
    torch.manual_seed(0)
    conf = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=512,
                            sliding_window=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id)
    model = Gemma3ForCausalLM(conf)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(folder))
    return folder


def test_prepare_a_tiny_gemma3(tmp_path, capsys):
    gemma = build_tiny_gemma3(tmp_path / "tiny-gemma3")
    prepare(small(gemma), say=lambda _: None, progress=False)
    assert_steers("tiny-gemma3", "hi", capsys)
