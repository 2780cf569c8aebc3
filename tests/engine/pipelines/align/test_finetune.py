"""LoRA fine-tuning on the tiny model: masking, checkpoints, resume, the saved adapter's logits,
the adapter with an SAE hook, and the QLoRA path."""

from __future__ import annotations

import json

import pytest
import torch

from steerchat.engine.pipelines.align.finetune import (STATE_NAME, FinetuneConfig, encode_row, finetune,
                                                       latest_checkpoint, micro_batch_indices)
from steerchat.engine.pipelines.align.records import AlignError, TrainingRow


ROWS = [TrainingRow("ordinary", f"What is {i} plus {i}?", f"It is {2 * i}.", "t") for i in range(12)]
CFG = FinetuneConfig(rank=4, alpha=8, dropout=0.1, lr=1e-2, warmup_steps=2, steps=6, batch_size=3, grad_accum=2,
                     max_seq_len=64, save_every=3, seed=3)


def _load(folder):
    from steerchat.engine.runtime.loading import load_model

    return load_model(str(folder))


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One uninterrupted 6-step run: (loaded model with its adapter, adapter folder, result)."""
    loaded = _load(tiny_model_dir)
    out = tmp_path_factory.mktemp("lora") / "adapter"
    result = finetune(loaded, ROWS, out, CFG, data_info={"train_file": "rows"})
    return loaded, out, result


def test_the_loss_is_on_the_reply_tokens_only(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    enc = encode_row(tok, TrainingRow("ordinary", "Hi there", "Hello!", "t"), 128)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True,
                                     tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert enc.labels[:n_prompt] == [-100] * n_prompt
    assert tok.decode(enc.labels[n_prompt:]) == "Hello!<|end|>\n"  # the reply and its end-of-turn
    assert enc.input_ids[n_prompt:] == enc.labels[n_prompt:]
    assert encode_row(tok, TrainingRow("ordinary", "x" * 200, "y", "t"), 64) is None  # no room for the reply


def test_data_order_depends_only_on_seed_and_position():
    a = [micro_batch_indices(10, 4, m, seed=1) for m in range(5)]
    assert a == [micro_batch_indices(10, 4, m, seed=1) for m in range(5)]
    assert sorted(a[0] + a[1] + a[2][:2]) == list(range(10))  # the first epoch is a permutation
    assert a != [micro_batch_indices(10, 4, m, seed=2) for m in range(5)]


def test_training_writes_adapter_checkpoints_and_manifest(trained):
    loaded, out, result = trained
    assert result.steps == 6 and len(result.losses) == 6
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-000003"]  # every 3, not the last
    state = torch.load(out / "checkpoints" / "step-000003" / STATE_NAME, weights_only=True)
    assert state["step"] == 3 and {"optimizer", "scheduler", "torch_rng", "losses"} <= set(state)
    manifest = json.loads((out / "steerchat_adapter.json").read_text())
    assert manifest["base_model"]["source"] == str(loaded.source)
    assert manifest["hyper_parameters"]["rank"] == 4 and manifest["hyper_parameters"]["steps"] == 6
    assert manifest["data"]["rows"] == 12 and manifest["data"]["kinds"] == {"ordinary": 12}
    assert set(manifest["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert manifest["losses"] == result.losses
    assert result.losses[-1] < result.losses[0]  # lr 1e-2 on 12 rows: it learns


def test_a_saved_and_loaded_adapter_gives_the_same_logits(trained, tiny_model_dir):
    from steerchat.engine.runtime.adapters import attach_adapter

    loaded, out, _ = trained
    ids = loaded.tokenizer("<|user|>\nWhat is 3 plus 3?<|end|>\n<|assistant|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        trained_logits = loaded.model(ids).logits
        base = _load(tiny_model_dir)
        base_logits = base.model(ids).logits
        model, name = attach_adapter(base.model, out)
        reloaded = model(ids).logits
    assert name == "adapter"
    assert (trained_logits - base_logits).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(reloaded, trained_logits, rtol=0, atol=1e-5)


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(trained, tiny_model_dir, tmp_path):
    _, full_out, full = trained
    out = tmp_path / "adapter"
    first = finetune(_load(tiny_model_dir), ROWS, out, CFG, stop_after=4)  # "killed" after step 4
    assert first.steps == 4 and not (out / "adapter_model.safetensors").exists()
    assert latest_checkpoint(out).name == "step-000003"
    with pytest.raises(AlignError, match="already holds checkpoints"):
        finetune(_load(tiny_model_dir), ROWS, out, CFG)
    resumed = finetune(_load(tiny_model_dir), ROWS, out, CFG, resume=True)  # from step 3: step 4 is redone
    assert resumed.steps == 6 and resumed.losses == full.losses
    a, b = _weights(full_out), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_adapter_and_sae_combine_with_the_hook_on_the_adapted_model(trained, tiny_model_dir, tmp_path):
    from steerchat.engine.runtime.sae import SAE
    from steerchat.engine.runtime.session import open_session

    _, adapter, _ = trained
    SAE.random(d_in=64, d_sae=128, k=8, hook_layer=1, seed=2).save(tmp_path / "sae")
    traces = {}
    for name, kw in {"base": {}, "adapted": {"adapter": str(adapter)}}.items():
        session = open_session(str(tiny_model_dir), sae=str(tmp_path / "sae"), **kw)
        session.sampling.max_new_tokens = 3
        traces[name] = session.send("What is 3 plus 3?")
    adapted = traces["adapted"]
    assert (adapted.adapter, adapted.hook_layer) == ("adapter", 1) and adapted.sae is not None
    assert traces["base"].adapter is None
    # The SAE reads layer 1 of the adapted model, so the prompt's features change with the adapter.
    prompt = lambda t: [tf.features for tf in t.tokens if tf.span == "prompt"]  # noqa: E731
    assert prompt(adapted) and prompt(adapted) != prompt(traces["base"])


def test_a_4bit_base_is_trained_the_qlora_way(tiny_model_dir, tmp_path):
    """The Phi-3-on-CUDA path (NF4 base + prepare_model_for_kbit_training), run on the CPU."""
    import bitsandbytes as bnb
    from steerchat.engine.runtime.loading import load_model

    loaded = load_model(str(tiny_model_dir), quant="4bit")
    cfg = FinetuneConfig(rank=2, alpha=4, steps=2, batch_size=2, max_seq_len=64, save_every=0)
    result = finetune(loaded, ROWS[:4], tmp_path / "adapter", cfg)
    base = loaded.model.get_base_model()
    assert base.is_gradient_checkpointing  # set by prepare_model_for_kbit_training
    frozen = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert frozen and not any(m.weight.requires_grad for m in frozen)
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    manifest = json.loads((tmp_path / "adapter" / "steerchat_adapter.json").read_text())
    assert manifest["base_model"]["quant"] == "4bit"
