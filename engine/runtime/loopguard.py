"""The loop guard: a stopping criterion that ends a reply once it is caught repeating itself.

It acts on every row, steered or not (unlike `batch.RefusalStop` and `batch.SteeredNoRepeat`,
which act only while the hook clamps), so a reply that would otherwise repeat one sentence
until the token limit ends at its third repeat. The rules are `engine.core.loops`'s.
"""

from __future__ import annotations

from typing import Iterable

import torch
from steerchat.engine.core.loops import (
    LOOP_MAX_SPAN,
    LOOP_MIN_TOKENS,
    LOOP_REPEATS,
    LOOP_STRETCH,
    repeats_needed,
)
from transformers import StoppingCriteria


class LoopGuard(StoppingCriteria):
    """Per-row, as `generate()` takes it. `width` is where the replies start (the padded
    prompt length); a row whose newest token is one of `end_ids` (end of sequence or padding:
    it finished, or was stopped, and only grows padding) is left alone. `stopped` maps each
    row the guard ended to its reply length."""

    def __init__(self, width: int, end_ids: Iterable[int] = (), repeats: int = LOOP_REPEATS,
                 min_tokens: int = LOOP_MIN_TOKENS, max_span: int = LOOP_MAX_SPAN, stretch: int = LOOP_STRETCH):
        super().__init__()
        self.width, self.repeats, self.min_tokens, self.max_span = width, repeats, min_tokens, max_span
        self.stretch = stretch
        self.end_ids = sorted({int(i) for i in end_ids if i is not None})
        self.stopped: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kwargs):
        gen = input_ids[:, self.width:]
        rows, n = gen.shape
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        for span in range(1, min(self.max_span, n // self.repeats) + 1):
            k = repeats_needed(span, self.repeats, self.min_tokens)
            if k * span > n:
                continue
            tail = gen[:, n - k * span:].reshape(rows, k, span)
            done |= (tail == tail[:, -1:, :]).all(dim=2).all(dim=1)
        if n >= self.repeats * self.stretch:  # the last `stretch` tokens said again and again, apart
            windows = gen.unfold(1, self.stretch, 1)  # (rows, n - stretch + 1, stretch)
            hits = (windows == windows[:, -1:, :]).all(dim=2)
            for row in (hits.sum(dim=1) >= self.repeats).nonzero().reshape(-1).tolist():
                count, bound = 0, n
                for start in reversed(hits[row].nonzero().reshape(-1).tolist()):
                    if start <= bound - self.stretch:
                        count, bound = count + 1, start
                done[row] |= count >= self.repeats
        if not bool(done.any()):
            return done
        if self.end_ids:  # a finished row only grows padding: its newest token is an end id
            done &= ~torch.isin(gen[:, -1], torch.tensor(self.end_ids, device=gen.device))
        for row in done.nonzero().reshape(-1).tolist():
            self.stopped.setdefault(int(row), n)
        return done


def end_ids(tokenizer, pad: int | None = None, model=None) -> list[int]:
    """The ids after which a row is finished: end of sequence (the tokenizer's and the model's
    generation config's, one or several) and padding."""
    ids: list = [pad]
    config = getattr(model, "generation_config", None)
    for eos in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
    return sorted({int(i) for i in ids if i is not None})
