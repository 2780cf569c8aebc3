"""How many CPU threads torch gets: the cores that are idle when the work starts.

torch's default is one thread per core. Its matrix products wait for every thread at each
step, so when another program keeps one core busy, every step waits for the slowest thread
and decoding collapses (measured on a 2-core box, one busy core: Qwen2.5-Coder-0.5B 10.4 →
3.0 tok/s on 2 threads, 6.8 on 1). Counting the busy cores just before a turn and leaving them
out keeps the speed of a quiet machine when it is quiet and most of it when it is not.
"""

from __future__ import annotations

import os

import torch

BUSY_PERCENT = 50.0  # a core above this share of use over the sample counts as taken
SAMPLE_S = 0.05  # how long the cores are watched before a turn (once per turn, not per token)


def idle_cores(sample_s: float = SAMPLE_S) -> int:
    """How many cores are not busy with other work right now (at least 1)."""
    import psutil  # imported here: measured only where a turn is about to run

    per_core = psutil.cpu_percent(interval=sample_s, percpu=True)
    busy = sum(p >= BUSY_PERCENT for p in per_core)
    return max(1, len(per_core) - busy)


def choose_threads(fixed: int | None = None) -> int:
    """`fixed` when given, else STEERCHAT_THREADS when set, else the idle cores."""
    if fixed:
        return int(fixed)
    env = os.environ.get("STEERCHAT_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return idle_cores()


def apply_threads(fixed: int | None = None) -> int:
    """Set torch's thread count for the work about to start; returns it."""
    n = choose_threads(fixed)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
