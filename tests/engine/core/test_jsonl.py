"""engine.core.jsonl: the one JSON Lines reader and writer."""

from dataclasses import dataclass

import pytest

from steerchat.engine.core.api import DatasetError, EngineError
from steerchat.engine.core.jsonl import iter_jsonl, read_jsonl, write_jsonl


@dataclass
class Row:
    prompt: str
    n: int


def test_rows_round_trip_with_line_numbers_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    assert write_jsonl(path, [Row("x", 1), {"prompt": "y", "n": 2}]) == 2
    assert write_jsonl(path, [Row("é ✓", 3)], append=True) == 1
    path.write_text(path.read_text() + "\n   \n")
    assert list(iter_jsonl(path)) == [(1, {"prompt": "x", "n": 1}), (2, {"prompt": "y", "n": 2}),
                                      (3, {"prompt": "é ✓", "n": 3})]


def test_a_torn_last_line_is_dropped_only_when_asked_and_only_at_the_end(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    with pytest.raises(DatasetError, match=r"results.jsonl:3: not valid JSON"):
        list(iter_jsonl(path))
    assert [v for _, v in iter_jsonl(path, tolerate_torn_tail=True)] == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(EngineError, match=r"results.jsonl:2: not valid JSON"):
        list(iter_jsonl(path, tolerate_torn_tail=True, error=EngineError))


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))
    binary = tmp_path / "garbage.jsonl"
    binary.write_bytes(b'{"a": "\xff\xfe"}\n')
    with pytest.raises(DatasetError, match="garbage.jsonl: not valid UTF-8 text"):
        list(iter_jsonl(binary))


def test_required_keys_and_objects(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "reply": "r"}\n{"prompt": "p", "reply": "  "}\n')
    with pytest.raises(DatasetError, match=r"pairs.jsonl:2: missing or empty 'reply'"):
        read_jsonl(path, required=("prompt", "reply"))
    path.write_text('{"prompt": "p"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"pairs.jsonl:2: expected a JSON object"):
        read_jsonl(path)
    path.write_text('{"prompt": "p", "split": "dev"}\n')
    assert read_jsonl(path, required=("prompt",)) == [{"prompt": "p", "split": "dev"}]
