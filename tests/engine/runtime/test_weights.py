"""Int8 weight-only linear layers: the arithmetic, the swap, loading with --quant int8, and the
steering hook on an int8 model (exact without a clamp, exact clamp arithmetic with one)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from steerchat.engine.runtime.weights import PACKED_MAX_ROWS, Int8Linear, quantize_int8_weights


def test_int8_linear_multiplies_by_its_dequantised_weight_one_row_or_many():
    torch.manual_seed(0)
    dense = nn.Linear(96, 160).to(torch.bfloat16)
    q = Int8Linear.from_linear(dense)
    assert q.qweight.dtype == torch.int8 and q.scale.shape == (160,)
    w = q.dequantized().float()
    # per-row absmax scaling: every weight within half a step of its row's scale
    assert torch.all((w - dense.weight.float()).abs() <= q.scale.float()[:, None] / 2 + 1e-3)
    for rows in (1, PACKED_MAX_ROWS, 7, 64):  # the packed kernel, then the dequantised product
        x = torch.randn(rows, 96).to(torch.bfloat16)
        want = x.float() @ w.T + dense.bias.float()
        got = q(x).float()
        assert got.shape == (rows, 160)
        assert torch.allclose(got, want, atol=0.05, rtol=0.02), rows
    x3 = torch.randn(2, 5, 96).to(torch.bfloat16)  # (batch, positions, d): the shape a model passes
    assert q(x3).shape == (2, 5, 160)


def test_every_linear_layer_is_swapped_and_the_model_still_predicts_alike(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
    n_linear = sum(isinstance(m, nn.Linear) for m in model.modules())
    assert quantize_int8_weights(model) == n_linear > 0
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        a, b = dense(ids).logits.float(), model(ids).logits.float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99


def test_quant_int8_loads_bfloat16_activations_and_int8_weights(tiny_model_dir):
    from steerchat.engine.runtime.loading import load_model

    lm = load_model(str(tiny_model_dir), quant="int8")
    assert lm.quant == "int8" and lm.dtype == torch.bfloat16
    assert any(isinstance(m, Int8Linear) for m in lm.model.modules())
    ids = torch.tensor([lm.tokenizer.encode("hello")])
    out = lm.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 4
    # batched work keeps dense weights: auto without single_stream, and no registry entry asks for int8
    assert load_model(str(tiny_model_dir)).quant == "none"
    assert load_model(str(tiny_model_dir), single_stream=True).quant == "none"


def test_an_adapter_asks_for_dense_weights(tiny_model_dir):
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.runtime.steered import open_steered

    with pytest.raises(EngineError, match="adapter needs dense weights"):
        open_steered(str(tiny_model_dir), sae="none", adapter="somewhere", quant="int8")


def test_the_hook_on_an_int8_model_is_exact(tiny_model_dir):
    """No clamp: bit-identical to the unhooked int8 model through generate. A clamp: the residual
    moves by exactly (c - a) W_dec[f], as on dense weights."""
    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.sae import SAE
    from steerchat.engine.runtime.steering import ClampRequest, SteeringHook
    from tests.engine.runtime.conftest import LAYER
    from tests.engine.runtime.test_steering import _capture_layer_output

    lm = load_model(str(tiny_model_dir), quant="int8")
    sae = SAE.random(d_in=64, d_sae=256, k=16, hook_layer=LAYER, seed=1).to(dtype=torch.bfloat16)
    ids = torch.tensor([lm.tokenizer.encode("hello there, how are you")])
    kw = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=lm.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        plain = lm.model.generate(ids, **kw)
        record = SteeringHook(sae, LAYER, refusal_features=[3, 4], control=lambda: ClampRequest(None))
        with record.applied(lm.model):
            hooked = lm.model.generate(ids, **kw)
    assert torch.equal(plain.sequences, hooked.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, hooked.scores))

    features, targets = [3, 40, 101], torch.tensor([5.0, 0.0, 2.5])
    original = _capture_layer_output(lm.model, LAYER, ids)
    clamp = SteeringHook(sae, LAYER, refusal_features=features, control=lambda: ClampRequest(targets))
    with clamp.applied(lm.model):
        steered = _capture_layer_output(lm.model, LAYER, ids)
    acts = sae.encode(original)[..., features].float()
    expected = original.float() + (targets - acts) @ sae.W_dec[features].float()
    assert torch.allclose(steered.float(), expected, atol=0.05)  # bfloat16 residual: its rounding only
    assert not torch.equal(steered, original)


def test_quantising_in_blocks_of_rows_gives_the_same_weights(monkeypatch):
    import steerchat.engine.runtime.weights as weights

    dense = nn.Linear(32, 50).to(torch.bfloat16)
    whole = Int8Linear.from_linear(dense)
    monkeypatch.setattr(weights, "_ROWS_PER_BLOCK", 7)  # 50 rows: seven full blocks and one of 1
    blocks = Int8Linear.from_linear(dense)
    assert torch.equal(whole.qweight, blocks.qweight) and torch.equal(whole.scale, blocks.scale)
