"""The rows the pipeline passes between stages, and the JSONL files that hold them.

Every stage appends its results to a JSONL file as each batch finishes, so an
interrupted stage re-run with the same output skips the items already written
(`done_keys`). A stage that finished writes its counts to `<file>.done`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from steerchat.engine.core.api import EngineError


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


def write_jsonl(path: Path, rows: Iterable, append: bool = False) -> int:
    """Write dataclass rows (or dicts) as JSONL; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row if isinstance(row, dict) else asdict(row), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file of objects; a bad line raises AlignError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise AlignError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlignError(f"{path.name}:{i}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise AlignError(f"{path.name}:{i}: expected a JSON object")
            missing = [k for k in required if not isinstance(obj.get(k), str) or not obj[k].strip()]
            if missing:
                raise AlignError(f"{path.name}:{i}: missing or empty {', '.join(repr(k) for k in missing)}")
            rows.append(obj)
    return rows


def done_keys(path: Path, key: str = "instruction") -> set[str]:
    """The items an interrupted stage already wrote (empty when it has not started)."""
    return {r[key] for r in read_jsonl(path)} if Path(path).is_file() else set()


def mark_done(path: Path, summary: dict) -> None:
    """Write the stage's counts to `<file>.done` (what `steerchat align` reports)."""
    Path(str(path) + ".done").write_text(json.dumps(summary, indent=1))

