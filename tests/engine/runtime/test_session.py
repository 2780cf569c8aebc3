"""A chat Session over a SteeredModel: cancel within one token, a slider move mid-reply, the
conditional clamp following the gate, and the turn trace's JSON round trip."""

from __future__ import annotations

import threading

import torch

from steerchat.engine.core.api import SamplingSettings
from steerchat.engine.core.featureset import FeatureSet, HarmGate, RefusalFeature
from steerchat.engine.core.levels import SafetyLevel, SafetySettings
from steerchat.engine.runtime.session import Session
from steerchat.engine.runtime.steered import SteeredModel


def _session(tiny, sae, gate_threshold=None, max_new_tokens=10):
    fs = FeatureSet(refusal_features=[RefusalFeature(3, 2.0), RefusalFeature(9, 1.5)])
    if gate_threshold is not None:
        fs.harm_gate = HarmGate(features=[0, 1, 2], weights=[1.0, 1.0, 1.0], threshold=gate_threshold)
    return Session(SteeredModel(tiny, sae, fs), sampling=SamplingSettings(max_new_tokens=max_new_tokens))


def _count_passes(model, after: int, event: threading.Event):
    """Set `event` once the model has run `after` forward passes."""
    n = {"calls": 0}

    def hook(module, args, output):
        n["calls"] += 1
        if n["calls"] >= after:
            event.set()

    return model.register_forward_hook(hook), n


def test_cancel_stops_within_one_token(tiny, sae):
    session = _session(tiny, sae, max_new_tokens=40)
    cancel = threading.Event()
    handle, n = _count_passes(tiny.model, 3, cancel)
    try:
        trace = session.send("write a long story", cancel=cancel)
    finally:
        handle.remove()
    assert trace.stopped
    # three forward passes produced three tokens; the stop is seen before a fourth pass
    assert n["calls"] == 3
    assert trace.timings.reply_tokens == 3
    assert session.history[-1] == ("write a long story", trace.reply)


def test_slider_move_mid_reply_is_recorded_and_applied(tiny, sae):
    session = _session(tiny, sae, max_new_tokens=8)
    maxed = SafetyLevel("Max", strength=3.0)
    n = {"calls": 0}

    def move(module, args, output):
        n["calls"] += 1
        if n["calls"] == 3:
            session.settings = SafetySettings(level=maxed)

    handle = tiny.model.register_forward_hook(move)
    try:
        trace = session.send("hi")
    finally:
        handle.remove()
    assert trace.level == "Off"
    assert trace.level_changes == [(3, "Max")]
    targets = [r.targets for r in session.steered.hook.records]
    assert all(t is None for t in targets[:3])
    assert all(torch.equal(t, torch.tensor([6.0, 4.5])) for t in targets[3:])
    assert [rf.target for rf in trace.refusal_features] == [6.0, 4.5]


def test_conditional_clamp_follows_the_gate(tiny, sae):
    cond = SafetySettings(level=SafetyLevel("Low", strength=3.0, conditional=True))
    closed = _session(tiny, sae, gate_threshold=1e9)
    closed.settings = cond
    off = _session(tiny, sae, gate_threshold=1e9)
    t_closed, t_off = closed.send("how do I do it"), off.send("how do I do it")
    assert t_closed.gate is not None and not t_closed.gate.open
    assert t_closed.reply == t_off.reply
    assert all(r.targets is None for r in closed.steered.hook.records)

    opened = _session(tiny, sae, gate_threshold=-1e9)
    opened.settings = cond
    t_open = opened.send("how do I do it")
    assert t_open.gate.open and t_open.conditional
    assert all(r.targets is not None for r in opened.steered.hook.records)


def test_trace_json_round_trips(tiny, sae):
    session = _session(tiny, sae, gate_threshold=0.0)
    session.settings = SafetySettings(level=SafetyLevel("High", strength=2.0))
    trace = session.send("hello [bold]there[/]")
    assert trace.tokens and trace.prompt_features and trace.refusal_features and trace.verdict
    again = type(trace).from_json(trace.to_json())
    assert again == trace
    assert again.to_json() == trace.to_json()


def test_the_open_level_reaches_the_hook_as_a_lowering_clamp_and_chats_start_at_off(tiny, sae):
    from steerchat.engine.core.levels import DEFAULT_LEVELS, OPEN_LEVEL, LevelScale

    gated = _session(tiny, sae, gate_threshold=1e9).steered  # the gate never opens: every prompt is benign
    request = gated.clamp_request(SafetySettings(level=OPEN_LEVEL))
    assert request.lower_where_closed and not request.conditional
    assert request.targets.tolist() == [0.0, 0.0]  # clamped down to 0 · m_f
    # a steering level is never a lowering one
    assert not gated.clamp_request(SafetySettings(level=DEFAULT_LEVELS[3])).lower_where_closed
    # without a gate nothing says a prompt is benign: Open does nothing
    assert _session(tiny, sae).steered.clamp_request(SafetySettings(level=OPEN_LEVEL)).targets is None

    gated.levels = LevelScale((OPEN_LEVEL,) + DEFAULT_LEVELS)
    session = Session(gated, sampling=SamplingSettings(max_new_tokens=2))
    assert session.levels.names[0] == "Open" and session.settings.level.name == "Off"
    session.settings = SafetySettings(level=OPEN_LEVEL)
    trace = session.send("hello")
    assert trace.level == "Open" and trace.strength == 0.0


def test_a_steered_refusal_records_how_the_model_opens_with_steering_off(tiny, sae, monkeypatch):
    from steerchat.engine.core.trace import Verdict
    from steerchat.engine.runtime import session as session_mod

    # every reply counts as a refusal, and an opening that starts with a space is one too
    monkeypatch.setattr(session_mod, "judge_refusal", lambda reply, lo=None: Verdict(
        refused=reply == "" or reply.startswith(" ") or lo is not None, score=1.0, evidence=[]))
    session = _session(tiny, sae, max_new_tokens=4)
    session.settings = SafetySettings(level=SafetyLevel("Max", strength=3.0))
    trace = session.send("hello there")
    tok, model = session.steered.loaded.tokenizer, session.steered.loaded.model
    ids = session.steered.prepare([], "hello there", session.settings, None).input_ids
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=session_mod.UNSTEERED_OPENING_TOKENS, pad_token_id=tok.pad_token_id)
    assert trace.unsteered_opening == tok.decode(plain[0, ids.shape[1]:], skip_special_tokens=True)
    assert trace.unsteered_refused == trace.unsteered_opening.startswith(" ")
    # nothing steered (Off): nothing to compare against
    session.settings = SafetySettings(level=SafetyLevel("Off"))
    assert session.send("hello there").unsteered_opening is None


def test_a_two_sided_level_raises_where_the_gate_opens_and_lowers_where_it_stays_closed(tiny, sae):
    two = SafetySettings(level=SafetyLevel("Max", strength=2.0, conditional=True, open_strength=-1.0))
    closed = _session(tiny, sae, gate_threshold=1e9)
    request = closed.steered.clamp_request(two)
    assert request.conditional and not request.lower_where_closed
    assert request.targets.tolist() == [4.0, 3.0] and request.closed_targets.tolist() == [-2.0, -1.5]
    # a plain conditional level has nothing to lower, and without a gate there is no two-sided clamp
    assert closed.steered.clamp_request(SafetySettings(level=SafetyLevel("Low", strength=2.0, conditional=True))
                                        ).closed_targets is None
    assert _session(tiny, sae).steered.clamp_request(two).closed_targets is None

    closed.settings = two
    t = closed.send("how do I do it")
    assert not t.gate.open and t.conditional and t.open_strength == -1.0 and t.lowered
    assert all(r.targets is None and r.closed_targets is not None for r in closed.steered.hook.records)
    assert [rf.target for rf in t.refusal_features] == [-2.0, -1.5]  # the trace shows the lowering targets

    opened = _session(tiny, sae, gate_threshold=-1e9)
    opened.settings = two
    t = opened.send("how do I do it")
    assert t.gate.open and not t.lowered and t.open_strength == -1.0
    assert all(r.targets is not None and r.closed_targets is None for r in opened.steered.hook.records)
    assert [rf.target for rf in t.refusal_features] == [4.0, 3.0]
