"""The steering hook: exact clamp arithmetic, bit-identity without a clamp, live targets, clean removal,
the harm gate's scoring, and attention-sink positions."""

from __future__ import annotations

import json

import pytest
import torch

from steerchat.engine.runtime.sae import SAE
from steerchat.engine.runtime.layers import decoder_layer
from steerchat.engine.runtime.steering import ClampRequest, FeatureGate, SteeringHook
from tests.engine.runtime.conftest import LAYER


def _capture_layer_output(model, layer_idx, ids):
    """The residual after layer `layer_idx` as the model (with any hooks attached) produces it."""
    seen = {}

    def grab(module, args, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    handle = decoder_layer(model, layer_idx).register_forward_hook(grab)
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen["h"]


def test_clamp_moves_residual_by_exactly_c_minus_a_times_w_dec(tiny, sae):
    model = tiny.model
    ids = torch.randint(0, 200, (1, 12))
    original = _capture_layer_output(model, LAYER, ids)
    features = [3, 40, 101]
    targets = torch.tensor([5.0, 0.0, 2.5])
    hook = SteeringHook(sae, LAYER, refusal_features=features, control=lambda: ClampRequest(targets))
    with hook.applied(model):
        steered = _capture_layer_output(model, LAYER, ids)  # the grab hook runs after the steering hook
    acts = sae.encode(original)[..., features]
    expected = original + (targets - acts) @ sae.W_dec[features]
    assert torch.allclose(steered, expected, atol=1e-5)
    # and the SAE now reads the clamped values on the steered residual, up to the error term's share
    assert not torch.equal(steered, original)


def test_clamp_with_activation_scale_uses_scaled_directions(tiny):
    sae = SAE.random(d_in=64, d_sae=128, architecture="relu", hook_layer=LAYER, seed=3)
    sae.cfg.activation_scale = 4.0
    ids = torch.randint(0, 200, (1, 6))
    original = _capture_layer_output(tiny.model, LAYER, ids)
    hook = SteeringHook(sae, LAYER, refusal_features=[7], control=lambda: ClampRequest(torch.tensor([3.0])))
    with hook.applied(tiny.model):
        steered = _capture_layer_output(tiny.model, LAYER, ids)
    a = sae.encode(original)[..., [7]]
    assert torch.allclose(steered - original, (3.0 - a) @ (sae.W_dec[[7]] * 4.0), atol=1e-5)


def test_hook_handles_tuple_outputs(sae):
    hidden = torch.randn(2, 5, 64)
    hook = SteeringHook(sae, LAYER, refusal_features=[1], control=lambda: ClampRequest(torch.tensor([2.0])))
    out = hook._hook(None, (), (hidden, "past"))
    assert isinstance(out, tuple) and out[1] == "past"
    a = sae.encode(hidden)[..., [1]]
    assert torch.allclose(out[0], hidden + (2.0 - a) @ sae.W_dec[[1]], atol=1e-5)


def test_no_clamp_returns_output_object_untouched(sae):
    hidden = torch.randn(1, 4, 64)
    hook = SteeringHook(sae, LAYER, refusal_features=[1], control=lambda: ClampRequest(None))
    assert hook._hook(None, (), hidden) is hidden
    out = (hidden, None)
    assert hook._hook(None, (), out) is out


def test_recording_only_is_bit_identical_through_generate(tiny, sae):
    model, tok = tiny.model, tiny.tokenizer
    ids = torch.tensor([tok.encode("hello there, how are you")])
    kw = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        hook = SteeringHook(sae, LAYER, refusal_features=[3, 4], control=lambda: ClampRequest(None))
        with hook.applied(model):
            hooked = model.generate(ids, **kw)
    assert torch.equal(plain.sequences, hooked.sequences)
    for a, b in zip(plain.scores, hooked.scores):
        assert torch.equal(a, b)
    # it did record: a prefill pass and one pass per further token
    assert hook.records[0].top_idx.shape[1] == ids.shape[1]
    assert all(r.top_idx.shape[1] == 1 for r in hook.records[1:])


def test_targets_are_read_every_step_and_apply_from_the_next_token(tiny, sae):
    model, tok = tiny.model, tiny.tokenizer
    ids = torch.tensor([tok.encode("tell me something")])
    calls = {"n": 0}
    big = torch.tensor([40.0])

    def control():
        calls["n"] += 1
        return ClampRequest(big if calls["n"] > 3 else None)

    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id, temperature=None,
              top_p=None, top_k=None, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
        hook = SteeringHook(sae, LAYER, refusal_features=[5], control=control)
        with hook.applied(model):
            steered = model.generate(ids, **kw)
    assert [r.targets is not None for r in hook.records] == [False] * 3 + [True] * (len(hook.records) - 3)
    # scores of the first three positions are untouched, the fourth differs
    for i in range(3):
        assert torch.equal(plain.scores[i], steered.scores[i])
    assert not torch.equal(plain.scores[3], steered.scores[3])


def test_hook_is_removed_after_an_exception(tiny, sae):
    layer = decoder_layer(tiny.model, LAYER)

    def boom():
        raise RuntimeError("control failed")

    hook = SteeringHook(sae, LAYER, refusal_features=[1], control=boom)
    with pytest.raises(RuntimeError):
        with hook.applied(tiny.model):
            tiny.model(torch.tensor([[1, 2, 3]]))
    assert len(layer._forward_hooks) == 0


def test_gate_scores_user_tokens_only():
    gate = FeatureGate(features=[0, 1], weights=[1.0, 2.0], threshold=3.0)
    acts = torch.zeros(2, 4, 5)
    acts[0, 0, 1] = 10.0  # outside the mask: ignored
    acts[0, 2, 0] = 1.0
    acts[1, 3, 1] = 2.0  # 4.0 >= 3
    mask = torch.tensor([[False, True, True, True], [True, True, True, True]])
    scores, _ = gate.scores(acts, mask)
    assert scores.tolist() == [1.0, 4.0]


def test_attention_sink_positions_are_neither_recorded_nor_clamped(sae):
    hidden = torch.randn(1, 6, 64)
    hidden[0, 0] *= 1000.0  # a sink: norm far above the rest
    target = torch.tensor([2.0])
    hook = SteeringHook(sae, LAYER, refusal_features=[1], control=lambda: ClampRequest(target))
    out = hook._hook(None, (), hidden)
    assert torch.equal(out[0, 0], hidden[0, 0])
    a = sae.encode(hidden[:, 1:])[..., [1]]
    assert torch.allclose(out[:, 1:], hidden[:, 1:] + (2.0 - a) @ sae.W_dec[[1]], atol=1e-5)
    rec = hook.records[0]
    assert float(rec.top_val[0, 0].abs().sum()) == 0.0
    # a later decode step is judged against the prompt's median norm
    step = hidden[:, :1].clone()
    assert torch.equal(hook._hook(None, (), step), step)


def test_probe_gate_is_mean_user_plus_mean_template_plus_bias():
    torch.manual_seed(0)
    h = torch.randn(2, 6, 4)
    # row 0: user tokens 1..3, template 4..5; row 1 (left-padded): user 2..3, template 4..5
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    u, v = [1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, -1.0]
    gate = FeatureGate([], [], threshold=0.0, method="probe", probe_user=u, probe_template=v, bias=0.25)
    score, per_pos = gate.scores(torch.zeros(2, 6, 3), mask, hidden=h)
    ut, vt = torch.tensor(u), torch.tensor(v)
    want0 = float((h[0, 1:4] @ ut).mean() + (h[0, 4:6] @ vt).mean() + 0.25)
    want1 = float((h[1, 2:4] @ ut).mean() + (h[1, 4:6] @ vt).mean() + 0.25)
    assert score.tolist() == pytest.approx([want0, want1], abs=1e-5)
    # per-position shares add up to the score less the bias, and positions that do not count are -inf
    finite = torch.isfinite(per_pos)
    assert finite.tolist() == [[False, True, True, True, True, True], [False, False, True, True, True, True]]
    assert float(per_pos[0][finite[0]].sum()) == pytest.approx(want0 - 0.25, abs=1e-5)
    assert float(per_pos[0, 2]) == pytest.approx(float(h[0, 2] @ ut) / 3, abs=1e-5)
    assert gate.last_signals[1]["template"] == pytest.approx(float((h[1, 4:6] @ vt).mean()), abs=1e-5)
    assert FeatureGate.template_mask(mask).tolist() == [[False] * 4 + [True, True], [False] * 4 + [True, True]]


def test_probe_gate_from_spec_and_trace_loads_old_gate():
    from steerchat.engine.core.featureset import HarmGate
    from steerchat.engine.core.trace import TurnTrace

    g = FeatureGate.from_spec(HarmGate([], [], 1.5, method="probe", probe_user=[1.0, 2.0], probe_template=[], bias=-1.0))
    assert g.is_probe and g.bias == -1.0 and g.probe_user == [1.0, 2.0]
    score, _ = g.scores(torch.zeros(1, 2, 3), torch.tensor([[True, True]]), hidden=torch.tensor([[[1.0, 1.0], [3.0, 0.0]]]))
    assert float(score[0]) == pytest.approx((3.0 + 3.0) / 2 - 1.0)
    old = {"prompt": "p", "reply": "r", "level": "Low", "guidance_mode": "none", "guidance_text": None, "strength": 1.0,
           "conditional": True, "model": "m", "gate": {"score": 1.0, "threshold": 0.5, "open": True, "method": "features",
                                                     "top_tokens": [["kill", 0.7]]}}
    t = TurnTrace.from_dict(old)
    assert t.gate.top_tokens == [("kill", 0.7)] and t.gate.signals == [] and t.gate.bottom_tokens == []
    t.gate.signals = [("bias", -1.0)]
    assert TurnTrace.from_json(t.to_json()).gate.signals == [("bias", -1.0)]


class _FixedGate(FeatureGate):
    """A gate whose decision the test sets: row 0 open, row 1 closed."""

    def scores(self, acts, mask, hidden=None):
        b, t = acts.shape[:2]
        return torch.tensor([1.0, 0.0][:b]), torch.zeros(b, t)


def test_open_level_lowers_refusal_only_where_the_gate_is_closed(tiny, sae):
    model = tiny.model
    ids = torch.randint(0, 200, (2, 10))
    original = _capture_layer_output(model, LAYER, ids)
    acts = sae.encode(original)
    features = [int(f) for f in acts[1].amax(0).topk(3).indices]  # features that fire on row 1, so the push is real
    targets = torch.zeros(3)
    gate = _FixedGate([], [], threshold=0.5)
    hook = SteeringHook(sae, LAYER, refusal_features=features, gate=gate,
                        control=lambda: ClampRequest(targets, lower_where_closed=True))
    with hook.applied(model):
        steered = _capture_layer_output(model, LAYER, ids)
    assert hook.gate_open.tolist() == [True, False]
    a = acts[..., features]
    expected_closed = original[1] + (targets - a[1]) @ sae.W_dec[features]
    assert torch.allclose(steered[1], expected_closed, atol=1e-5)
    assert not torch.allclose(steered[1], original[1])
    assert torch.equal(steered[0], original[0])  # the gate-open row is not touched at all

    # only downwards: a target above the natural activation leaves even the closed row alone
    high = torch.full((3,), 1e3)
    hook.control = lambda: ClampRequest(high, lower_where_closed=True)
    with hook.applied(model):
        assert torch.equal(_capture_layer_output(model, LAYER, ids), original)
    # and without a gate nothing is lowered
    hook.gate, hook.control = None, lambda: ClampRequest(targets, lower_where_closed=True)
    with hook.applied(model):
        assert torch.equal(_capture_layer_output(model, LAYER, ids), original)


def test_open_level_round_trips_and_old_levels_stay_as_they_were():
    from steerchat.engine.core.levels import DEFAULT_LEVELS, OPEN_LEVEL, SafetyLevel

    assert OPEN_LEVEL.lower and OPEN_LEVEL.strength == 0.0 and not OPEN_LEVEL.conditional
    assert SafetyLevel.from_dict(OPEN_LEVEL.to_dict()) == OPEN_LEVEL
    assert "lower" not in DEFAULT_LEVELS[2].to_dict()
    assert SafetyLevel.from_dict(DEFAULT_LEVELS[2].to_dict()).lower is False


def test_two_sided_clamp_raises_open_rows_and_only_lowers_closed_ones_exactly(tiny, sae):
    model = tiny.model
    ids = torch.randint(0, 200, (2, 10))
    original = _capture_layer_output(model, LAYER, ids)
    acts = sae.encode(original)
    features = [int(f) for f in acts[1].amax(0).topk(3).indices]  # they fire on the closed row: the push is real
    up, down = torch.tensor([4.0, 3.0, 5.0]), torch.full((3,), -1.0)
    hook = SteeringHook(sae, LAYER, refusal_features=features, gate=_FixedGate([], [], threshold=0.5),
                        control=lambda: ClampRequest(up, conditional=True, closed_targets=down))
    with hook.applied(model):
        steered = _capture_layer_output(model, LAYER, ids)
    a = acts[..., features]
    # the open row: clamped to the targets, (c - a)·W_dec; the closed row: min(c' - a, 0)·W_dec
    assert torch.allclose(steered[0], original[0] + (up - a[0]) @ sae.W_dec[features], atol=1e-5)
    assert torch.allclose(steered[1], original[1] + (down - a[1]).clamp(max=0) @ sae.W_dec[features], atol=1e-5)
    assert not torch.allclose(steered[1], original[1])
    # the refusal guards are for the raised row only, and both target sets are on record
    assert hook.steered_rows.tolist() == [True, False]
    assert torch.equal(hook.records[0].targets, up) and torch.equal(hook.records[0].closed_targets, down)

    # a closed target above every natural activation leaves the closed row bit-identical
    hook.control = lambda: ClampRequest(up, conditional=True, closed_targets=torch.full((3,), 1e3))
    with hook.applied(model):
        assert torch.equal(_capture_layer_output(model, LAYER, ids)[1], original[1])
    # a gate open on every row leaves nothing to lower; one closed on every row raises nothing
    hook.gate = _AllGate([], [], threshold=0.5)
    hook.control = lambda: ClampRequest(None, conditional=True, closed_targets=down)
    with hook.applied(model):
        assert torch.equal(_capture_layer_output(model, LAYER, ids), original)
        assert hook.records[0].closed_targets is None
    hook.gate, hook.control = _AllGate([], [], threshold=2.0), lambda: ClampRequest(up, conditional=True, closed_targets=down)
    with hook.applied(model):
        lowered = _capture_layer_output(model, LAYER, ids)
    assert hook.steered_rows is None and hook.records[0].targets is None
    assert torch.allclose(lowered, original + (down - a).clamp(max=0) @ sae.W_dec[features], atol=1e-5)
    # without a gate a two-sided clamp does nothing at all
    hook.gate = None
    with hook.applied(model):
        assert torch.equal(_capture_layer_output(model, LAYER, ids), original)


class _AllGate(FeatureGate):
    """Every row scores 1: open when the threshold is below 1, closed when above."""

    def scores(self, acts, mask, hidden=None):
        b, t = acts.shape[:2]
        return torch.ones(b), torch.zeros(b, t)


class _ThreeGate(FeatureGate):
    """Rows score 1.0, 0.0 and -1.0: with threshold 0.5 and benign threshold -0.5, row 0 is open,
    row 1 in between (closed, not benign) and row 2 benign."""

    def scores(self, acts, mask, hidden=None):
        b, t = acts.shape[:2]
        return torch.tensor([1.0, 0.0, -1.0][:b]), torch.zeros(b, t)


@pytest.mark.parametrize("two_sided", [True, False])
def test_a_benign_threshold_lowers_only_below_it_and_leaves_the_band_bit_identical(tiny, sae, two_sided):
    model = tiny.model
    ids = torch.randint(0, 200, (3, 10))
    original = _capture_layer_output(model, LAYER, ids)
    acts = sae.encode(original)
    features = [int(f) for f in acts[1:].amax((0, 1)).topk(3).indices]  # they fire on the closed rows
    up, down = torch.tensor([4.0, 3.0, 5.0]), torch.full((3,), -1.0)
    request = (ClampRequest(up, conditional=True, closed_targets=down) if two_sided
               else ClampRequest(down, lower_where_closed=True))
    gate = _ThreeGate([], [], threshold=0.5, benign_threshold=-0.5)
    hook = SteeringHook(sae, LAYER, refusal_features=features, gate=gate, control=lambda: request)
    with hook.applied(model):
        steered = _capture_layer_output(model, LAYER, ids)
    assert hook.gate_open.tolist() == [True, False, False] and hook.gate_benign.tolist() == [False, False, True]
    a = acts[..., features]
    if two_sided:
        assert torch.allclose(steered[0], original[0] + (up - a[0]) @ sae.W_dec[features], atol=1e-5)
    else:
        assert torch.equal(steered[0], original[0])  # Open never raises
    assert torch.equal(steered[1], original[1])  # in between: neither raised nor lowered, bit for bit
    assert torch.allclose(steered[2], original[2] + (down - a[2]).clamp(max=0) @ sae.W_dec[features], atol=1e-5)
    assert not torch.allclose(steered[2], original[2])
    # with no row below the benign threshold, nothing is lowered and no lowering is on record
    hook.gate = _ThreeGate([], [], threshold=0.5, benign_threshold=-2.0)
    with hook.applied(model):
        out = _capture_layer_output(model, LAYER, ids)
    assert torch.equal(out[1:], original[1:]) and hook.records[0].closed_targets is None
    if not two_sided:
        assert hook.records[0].targets is None


def test_the_benign_threshold_round_trips_and_must_not_exceed_the_gate_s(tmp_path):
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.featureset import FeatureSet, HarmGate, RefusalFeature

    fs = FeatureSet(refusal_features=[RefusalFeature(1, 2.0)],
                    harm_gate=HarmGate([1], [1.0], 0.5, benign_threshold=-0.25))
    fs.save(tmp_path)
    back = FeatureSet.load(tmp_path)
    assert back.harm_gate.benign_threshold == -0.25
    assert FeatureGate.from_spec(back.harm_gate).benign_threshold == -0.25
    # a gate without one lowers wherever it is closed, as before
    plain = FeatureGate([], [], threshold=0.5)
    assert plain.is_benign(torch.tensor([0.4, 0.5])).tolist() == [True, False]
    data = json.loads((tmp_path / "features.json").read_text())
    data["harm_gate"]["benign_threshold"] = 0.75
    (tmp_path / "features.json").write_text(json.dumps(data))
    with pytest.raises(EngineError, match="benign_threshold 0.75 must be a finite number no higher than the threshold"):
        FeatureSet.load(tmp_path)


def test_two_sided_levels_round_trip_and_reject_a_raising_open_strength():
    from steerchat.engine.core.levels import DEFAULT_LEVELS, SafetyLevel

    two = SafetyLevel("Max", strength=2.0, conditional=True, open_strength=-1.0)
    assert two.two_sided and SafetyLevel.from_dict(two.to_dict()) == two
    assert "open_strength" not in DEFAULT_LEVELS[2].to_dict() and not DEFAULT_LEVELS[2].two_sided
    assert not SafetyLevel("x", strength=2.0, open_strength=-1.0).two_sided  # needs the gate's condition
    with pytest.raises(ValueError, match="open_strength"):
        SafetyLevel.from_dict({"name": "Max", "strength": 2.0, "conditional": True, "open_strength": 1.0})


def test_a_levels_file_with_a_raising_open_strength_is_named(tmp_path):
    import json

    from steerchat.engine.core.levels import LevelError, LevelScale

    path = tmp_path / "levels.json"
    path.write_text(json.dumps({"levels": [{"name": "Max", "strength": 2, "conditional": True, "open_strength": 0.5}]}))
    with pytest.raises(LevelError, match="levels.json"):
        LevelScale.load(path)
