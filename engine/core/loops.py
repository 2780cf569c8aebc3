"""When a reply is caught in a loop: the rules the loop guard stops on, in plain Python.

A reply loops when either
- its last tokens are one span said `repeats` times back to back, the repeated stretch
  covering at least `min_tokens` tokens (so "!!!" or a short markdown rule never counts: a
  one-token span must repeat 24 times, an eight-token sentence 3 times); or
- its last `stretch` tokens (10) are said for the `repeats`-th time in the reply, each time
  apart from the others (not overlapping): a sentence that keeps coming back with other
  text between ("They are very loyal to their family. ... They are very loyal to ...").
`engine.runtime.loopguard.LoopGuard` applies the same rules to a batch of token ids at every
decoding step; `caught_in_loop` is its reference, and what the fake engine uses.
"""

from __future__ import annotations

from math import ceil
from typing import Sequence

LOOP_REPEATS = 3  # the span said this many times back to back (at least)
LOOP_MIN_TOKENS = 24  # ... covering at least this many tokens in all
LOOP_MAX_SPAN = 64  # longest span looked for
LOOP_STRETCH = 10  # a stretch of this many tokens said `LOOP_REPEATS` times, apart, is a loop too

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


def recurring_stretch(ids: Sequence, stretch: int = LOOP_STRETCH, repeats: int = LOOP_REPEATS) -> bool:
    """Are the last `stretch` tokens of `ids` said `repeats` times or more, none overlapping?"""
    ids = list(ids)
    n = len(ids)
    if n < repeats * stretch:
        return False
    last = ids[n - stretch:]
    count, bound = 1, n - stretch  # the last occurrence starts at n - stretch
    for start in range(n - 2 * stretch, -1, -1):
        if start <= bound - stretch and ids[start : start + stretch] == last:
            count, bound = count + 1, start
            if count >= repeats:
                return True
    return False


def caught_in_loop(ids: Sequence) -> bool:
    """Does the loop guard end a reply whose tokens so far are `ids`?"""
    return repeating_span(ids) is not None or recurring_stretch(ids)
