"""The loop guard (a reply caught repeating itself ends; every row, steered or not) and the
sampling defaults a session takes from the model's own generation config."""

from __future__ import annotations

import random

import torch
from transformers import GenerationConfig, LogitsProcessor

from steerchat.engine.core.api import SamplingSettings, model_sampling_defaults, resolve_sampling
from steerchat.engine.core.loops import caught_in_loop, recurring_stretch, repeating_span
from steerchat.engine.runtime.loopguard import LoopGuard

PROMPT = [1, 2, 3, 4, 5]
OPENING = [10, 11, 12, 13]
SPAN = [20, 21, 22, 23, 24, 25, 26, 27]  # eight tokens: three copies (24 tokens) make a loop


def _first_stop(guard: LoopGuard, reply: list[list[int]]) -> list[int | None]:
    """Run `guard` as generate() does, one token per step; the reply length at which each row stopped."""
    stops: list[int | None] = [None] * len(reply)
    for n in range(1, len(reply[0]) + 1):
        ids = torch.tensor([PROMPT + r[:n] for r in reply])
        for row, stop in enumerate(guard(ids, None).tolist()):
            if stop and stops[row] is None:
                stops[row] = n
    return stops


def test_a_planted_loop_stops_at_its_third_copy():
    reply = OPENING + SPAN * 6
    guard = LoopGuard(width=len(PROMPT))
    assert _first_stop(guard, [reply]) == [len(OPENING) + 3 * len(SPAN)]  # 28: not one token earlier
    assert guard.stopped == {0: 28}
    assert repeating_span(reply[:28]) == 8 and repeating_span(reply[:27]) is None


def test_a_reply_without_repetition_never_stops():
    rng = random.Random(0)
    varied = [rng.randrange(50, 5000) for _ in range(300)]
    assert _first_stop(LoopGuard(width=len(PROMPT)), [varied]) == [None]
    # short repeats are not loops: "!!!" (one token 23 times) or a sentence said twice
    assert _first_stop(LoopGuard(width=len(PROMPT)), [OPENING + [7] * 23]) == [None]
    assert _first_stop(LoopGuard(width=len(PROMPT)), [OPENING + SPAN * 2 + [9] * 5]) == [None]
    # ... but one token said 24 times over is
    assert _first_stop(LoopGuard(width=len(PROMPT)), [OPENING + [7] * 30]) == [len(OPENING) + 24]


def test_rows_of_a_batch_stop_on_their_own():
    rng = random.Random(1)
    varied = [rng.randrange(50, 5000) for _ in range(60)]
    late = [rng.randrange(50, 5000) for _ in range(20)] + SPAN * 5
    rows = [(OPENING + SPAN * 7)[:60], varied, late[:60],
            OPENING + SPAN * 2 + [2] * 40]  # finished (end id 2), then padding: left alone
    guard = LoopGuard(width=len(PROMPT), end_ids=[2])
    assert _first_stop(guard, rows) == [28, None, 20 + 24, None]
    assert guard.stopped == {0: 28, 2: 44}


def test_a_sentence_that_keeps_coming_back_stops_at_its_third_time():
    sentence = list(range(30, 40))  # ten tokens, said again with other text between
    reply = OPENING + sentence + [50, 51, 52] + sentence + [60, 61] + sentence + [70] * 5
    third_end = len(OPENING) + 10 + 3 + 10 + 2 + 10
    guard = LoopGuard(width=len(PROMPT))
    assert _first_stop(guard, [reply]) == [third_end]
    assert recurring_stretch(reply[:third_end]) and not recurring_stretch(reply[:third_end - 1])
    # twice is not a loop, nor three times overlapping (one token 12 times is not 3 apart 10-token stretches)
    assert _first_stop(LoopGuard(width=len(PROMPT)), [OPENING + sentence + [50] + sentence + [60] * 2]) == [None]
    assert not recurring_stretch([7] * 29) and recurring_stretch([7] * 30)


def test_tensor_guard_agrees_with_the_reference():
    rng = random.Random(2)
    for _ in range(300):
        span = [rng.randrange(3) for _ in range(rng.randrange(1, 13))]
        seq = [rng.randrange(3) for _ in range(rng.randrange(0, 20))] + span * rng.randrange(0, 8)
        seq += [rng.randrange(2) for _ in range(rng.randrange(0, 40))]
        if not seq:
            continue
        got = bool(LoopGuard(width=0)(torch.tensor([seq]), None)[0])
        assert got == caught_in_loop(seq), seq


# ---- sampling defaults: the user's, else the model's own, else steerchat's (greedy) ----

QWEN_LIKE = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.1)


def test_the_models_generation_config_is_used():
    defaults = model_sampling_defaults(QWEN_LIKE)
    assert defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.1}
    sp = resolve_sampling(SamplingSettings(), defaults)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty) == (0.7, 0.8, 20, 1.1)
    assert not sp.greedy and sp.seed == 0 and sp.loop_guard is True


def test_user_values_override_the_model():
    user = SamplingSettings(temperature=0.3, top_k=0, max_new_tokens=32)
    sp = resolve_sampling(user, model_sampling_defaults(QWEN_LIKE))
    assert (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty, sp.max_new_tokens) == (0.3, 0.8, 0, 1.1, 32)
    greedy = resolve_sampling(SamplingSettings(temperature=0.0), model_sampling_defaults(QWEN_LIKE))
    assert greedy.greedy and greedy.repetition_penalty == 1.1  # greedy stays available
    assert user.temperature == 0.3 and user.top_p is None  # the user's own settings are not touched


def test_no_generation_config_means_greedy():
    for config in (None, GenerationConfig(), GenerationConfig(do_sample=False, temperature=0.7)):
        sp = resolve_sampling(SamplingSettings(), model_sampling_defaults(config))
        assert sp.greedy and (sp.temperature, sp.top_p, sp.top_k, sp.repetition_penalty) == (0.0, 1.0, 0, 1.0)
    # a penalty alone counts, without sampling
    assert model_sampling_defaults(GenerationConfig(repetition_penalty=1.2)) == {"repetition_penalty": 1.2}


# ---- in a session and in generate_batch, on the tiny model ----

class _Cycle(LogitsProcessor):
    """Forces the reply into a loop: the tokens of `span` over and over from reply token `after`."""

    def __init__(self, width: int, span: list[int], after: int = 3, rows=None):
        self.width, self.span, self.after, self.rows = width, span, after, rows

    def __call__(self, input_ids, scores):
        n = input_ids.shape[1] - self.width
        if n < self.after:
            return scores
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.span[(n - self.after) % len(self.span)]] = 0.0
        if self.rows is None:
            return forced
        return torch.where(torch.tensor(self.rows[: scores.shape[0]])[:, None], forced, scores)


def _forcing(model, monkeypatch, span, rows=None):
    original = model.generate

    def generate(*args, **kw):
        width = kw["input_ids"].shape[1]
        kw["logits_processor"] = list(kw.get("logits_processor") or []) + [_Cycle(width, span, rows=rows)]
        return original(*args, **kw)

    monkeypatch.setattr(model, "generate", generate)


def _tokens(tiny, n):
    special = set(tiny.tokenizer.all_special_ids)
    return [t for t in range(100, 1000) if t not in special][:n]


def test_session_reply_ends_at_the_loop_and_says_so(tiny, monkeypatch):
    from steerchat.engine.runtime.session import Session
    from steerchat.engine.runtime.steered import SteeredModel

    span = _tokens(tiny, 8)
    _forcing(tiny.model, monkeypatch, span)
    session = Session(SteeredModel(tiny), sampling=SamplingSettings(max_new_tokens=60))
    trace = session.send("hi")
    assert trace.loop_stopped and trace.timings.reply_tokens == 3 + 3 * 8 and not trace.stopped
    session.sampling.loop_guard = False
    trace = session.send("hi")
    assert not trace.loop_stopped and trace.timings.reply_tokens == 60


def test_session_takes_the_models_sampling(tiny, monkeypatch):
    from steerchat.engine.runtime.session import Session
    from steerchat.engine.runtime.steered import SteeredModel

    monkeypatch.setattr(tiny.model, "generation_config", QWEN_LIKE)
    session = Session(SteeredModel(tiny), sampling=SamplingSettings(max_new_tokens=4))
    seen = {}
    original = tiny.model.generate
    monkeypatch.setattr(tiny.model, "generate", lambda **kw: (seen.update(kw), original(**kw))[1])
    session.send("hi")
    assert (seen["do_sample"], seen["temperature"], seen["top_p"], seen["top_k"], seen["repetition_penalty"]) == \
        (True, 0.7, 0.8, 20, 1.1)
    session.sampling = SamplingSettings(temperature=0.0, max_new_tokens=4)
    session.send("hi")
    assert seen["do_sample"] is False and seen["repetition_penalty"] == 1.1


def test_generate_batch_guard_is_per_row_and_batches_past_the_first(tiny, monkeypatch):
    from steerchat.engine.core.levels import SafetySettings
    from steerchat.engine.runtime.batch import generate_batch
    from steerchat.engine.runtime.steered import SteeredModel

    steered = SteeredModel(tiny)
    span = _tokens(tiny, 8)
    _forcing(tiny.model, monkeypatch, span, rows=[True, False])  # the first row of each batch loops
    prompts = ["hi", "hello there", "what is two plus two", "name a colour", "bye"]
    off = generate_batch(steered, prompts, SafetySettings(), max_new_tokens=40, batch_size=2)
    on = generate_batch(steered, prompts, SafetySettings(), max_new_tokens=40, batch_size=2, loop_guard=True)
    assert len(on) == len(off) == 5  # three batches (the second used to fail)
    assert [r.loop_stopped for r in off] == [False] * 5
    assert [r.loop_stopped for r in on] == [True, False, True, False, True]
    assert [r.tokens for r in on if r.loop_stopped] == [27, 27, 27]
    assert [r.tokens for r in off][0] == 40
    # rows the guard left alone decode exactly as without it
    assert [r.reply for r in on][1::2] == [r.reply for r in off][1::2]
