"""When a reply is caught in a loop: the rule the loop guard stops on, in plain Python.

A reply loops when its last tokens are one span said `repeats` times back to back, the
repeated stretch covering at least `min_tokens` tokens (so "!!!" or a short markdown rule
never counts: a one-token span must repeat 24 times, an eight-token sentence 3 times).
`engine.runtime.loopguard.LoopGuard` applies the same rule to a batch of token ids at every
decoding step; `repeating_span` is its reference, and what the fake engine uses.
"""

from __future__ import annotations

from math import ceil
from typing import Sequence

LOOP_REPEATS = 3  # the span said this many times back to back (at least)
LOOP_MIN_TOKENS = 24  # ... covering at least this many tokens in all
LOOP_MAX_SPAN = 64  # longest span looked for

LOOP_GUARD_MESSAGE = "stopped: it was repeating itself (loop guard)"


def repeats_needed(span: int, repeats: int = LOOP_REPEATS, min_tokens: int = LOOP_MIN_TOKENS) -> int:
    """How many back-to-back copies of a `span`-token span make a loop."""
    return max(repeats, ceil(min_tokens / span))


def repeating_span(ids: Sequence, repeats: int = LOOP_REPEATS, min_tokens: int = LOOP_MIN_TOKENS,
                   max_span: int = LOOP_MAX_SPAN) -> int | None:
    """The length of the shortest span that ends `ids` repeated into a loop, or None."""
    ids = list(ids)
    n = len(ids)
    for span in range(1, min(max_span, n // repeats) + 1):
        k = repeats_needed(span, repeats, min_tokens)
        if k * span > n:
            continue
        last = ids[n - span:]
        if all(ids[n - (j + 1) * span : n - j * span] == last for j in range(1, k)):
            return span
    return None
