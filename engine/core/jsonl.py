"""JSON Lines files: the one reader and writer every stage, sweep and data set uses.

A bad line is reported as ``FILE:LINE: not valid JSON (…)``. Files that are appended to
while a run goes on (results, generated replies, stage outputs) may end in a line cut
short by a crash; `tolerate_torn_tail` drops such a last line, which the run redoes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from steerchat.engine.core.api import DatasetError, EngineError


def iter_jsonl(path: Path, *, tolerate_torn_tail: bool = False,
               error: type[EngineError] = DatasetError) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path.name}: not valid UTF-8 text") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    yield from parse_jsonl(text, path.name, tolerate_torn_tail=tolerate_torn_tail, error=error)


def parse_jsonl(text: str, name: str, *, tolerate_torn_tail: bool = False,
                error: type[EngineError] = DatasetError) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of JSONL `text`; `name` is the file's, for messages."""
    lines = text.splitlines()
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if tolerate_torn_tail and lineno == last:
                return
            raise error(f"{name}:{lineno}: not valid JSON ({exc.msg})") from None
        yield lineno, value


def read_jsonl(path: Path, required: tuple[str, ...] = (), *, tolerate_torn_tail: bool = False,
               error: type[EngineError] = DatasetError) -> list[dict]:
    """The objects of a JSONL file; each must hold a non-empty string under every `required` key."""
    rows = []
    for lineno, obj in iter_jsonl(path, tolerate_torn_tail=tolerate_torn_tail, error=error):
        if not isinstance(obj, dict):
            raise error(f"{Path(path).name}:{lineno}: expected a JSON object")
        missing = [k for k in required if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if missing:
            raise error(f"{Path(path).name}:{lineno}: missing or empty {', '.join(repr(k) for k in missing)}")
        rows.append(obj)
    return rows


def _plain(row: Any) -> Any:
    return asdict(row) if is_dataclass(row) and not isinstance(row, type) else row


def write_jsonl(path: Path, rows: Iterable, append: bool = False) -> int:
    """Write dataclass rows (or dicts) as JSONL, one flushed line each; returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
            n += 1
        fh.flush()
    return n
