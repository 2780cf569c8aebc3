"""The rows the pipeline passes between stages, and the JSONL files that hold them.

Every stage appends its results to a JSONL file as each batch finishes, so an
interrupted stage re-run with the same output skips the items already written
(`done_keys`). A stage that finished writes its counts to `<file>.done`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from steerchat.engine.core.api import EngineError
from steerchat.engine.core.jsonl import read_jsonl


class AlignError(EngineError):
    """A pipeline input or stage output that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Mistake:
    """A bad reply to an instruction, and where it came from (induced, file, history)."""

    instruction: str
    reply: str
    source: str


@dataclass(frozen=True)
class Analysis:
    """The model's explanation of why a mistake is harmful."""

    instruction: str
    reply: str
    analysis: str
    source: str


@dataclass(frozen=True)
class GoodReply:
    """An instruction and a reply the judge accepts (for a harmful instruction: a refusal)."""

    instruction: str
    reply: str
    harmful: bool
    source: str


@dataclass
class TrainingRow:
    """One fine-tuning example: a user message (no hints) and the reply to learn."""

    kind: str  # "analysis", "answer" (harmful instruction → good reply) or "ordinary"
    prompt: str
    reply: str
    source: str
    meta: dict = field(default_factory=dict)


def done_keys(path: Path, key: str = "instruction") -> set[str]:
    """The items an interrupted stage already wrote (empty when it has not started)."""
    return {r[key] for r in read_jsonl(path, error=AlignError)} if Path(path).is_file() else set()


def mark_done(path: Path, summary: dict) -> None:
    """Write the stage's counts to `<file>.done` (what `steerchat align` reports)."""
    Path(str(path) + ".done").write_text(json.dumps(summary, indent=1))

