"""Decoding guards for steered refusals: stop once a decline sentence is complete."""

from __future__ import annotations

import torch

from steerchat.engine.runtime.batch import RefusalStop


class _Tok:
    def __init__(self, texts):
        self.texts = texts

    def batch_decode(self, ids, skip_special_tokens=True):
        return self.texts


def test_refusal_stop_ends_rows_with_a_complete_decline_only():
    texts = ["I'm sorry, but I can't help with that.", "I'm sorry, but I can't help with",
             "I'm really sorry.", "Sure, here is how you do it."]
    stop = RefusalStop(_Tok(texts), width=3, every=1)
    ids = torch.zeros(4, 3 + 6, dtype=torch.long)
    assert stop(ids, None).tolist() == [True, False, False, False]
    # too early (fewer than 4 reply tokens) or off the checking stride: nothing stops
    assert stop(torch.zeros(4, 3 + 2, dtype=torch.long), None).tolist() == [False] * 4
    assert RefusalStop(_Tok(texts), width=3, every=4)(torch.zeros(4, 3 + 6, dtype=torch.long), None).tolist() == [False] * 4


def test_no_repeat_guard_acts_only_on_steered_rows():
    from steerchat.engine.runtime.batch import SteeredNoRepeat

    ids = torch.tensor([[1, 2, 3, 1, 2], [1, 2, 3, 1, 2]])  # "1 2" was followed by 3: a 3-gram repeat would ban 3
    scores = torch.zeros(2, 6)
    rows = {"r": None}
    guard = SteeredNoRepeat(3, lambda: rows["r"])
    assert torch.equal(guard(ids, scores), scores)  # nothing steered: untouched
    rows["r"] = torch.tensor([True, False])
    out = guard(ids, scores)
    assert out[0, 3] == float("-inf") and torch.equal(out[1], scores[1])
    assert int(torch.isinf(out[0]).sum()) == 1
    # RefusalStop leaves unsteered rows running even when their text is a complete decline
    texts = ["I can't help with that.", "I can't help with that."]
    stop = RefusalStop(_Tok(texts), width=1, every=1, rows=lambda: torch.tensor([False, True]))
    assert stop(torch.zeros(2, 6, dtype=torch.long), None).tolist() == [False, True]
