"""Batched greedy generation into a resumable JSONL stage file (shared by every stage that
asks the model for text)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from steerchat.engine.core.jsonl import read_jsonl, write_jsonl
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.pipelines.align.records import AlignError, done_keys
from steerchat.engine.runtime.batch import BatchReply, generate_batch

Progress = Callable[[int], None]


def generate_stage(
    steered,
    items: list[dict],
    out_path: Path,
    make_prompt: Callable[[dict], str],
    settings: SafetySettings,
    judge: Callable[[dict, BatchReply], dict],
    *,
    key: str = "instruction",
    max_new_tokens: int = 96,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> list[dict]:
    """Generate a reply for each item not yet in `out_path` and append one row per item.

    `judge(item, reply)` returns the row to write (it decides what is kept). Rows are
    written after every batch, so a killed run loses at most one batch. Returns every
    row in the file, old and new.
    """
    seen = done_keys(out_path, key)
    todo = []
    for item in items:
        if item[key] not in seen:
            seen.add(item[key])  # also drops duplicates within `items`
            todo.append(item)
    if progress and len(items) > len(todo):
        progress(len(items) - len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        replies = generate_batch(steered, [make_prompt(it) for it in chunk], settings,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size)
        write_jsonl(out_path, [judge(it, r) for it, r in zip(chunk, replies)], append=True)
        if progress:
            progress(len(chunk))
    return read_jsonl(out_path, error=AlignError) if Path(out_path).is_file() else []
