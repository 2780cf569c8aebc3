"""Evaluation and development data: the shipped sets and parsers for every input format.

Pure Python (no torch). Every loader returns a list of small dataclasses and raises
`DatasetError` for a file it cannot use, naming the file, the line and the fault, e.g.
``harmful.jsonl:17: not valid JSON (Expecting ',' delimiter)`` or
``mmlu.csv:4: answer 'E' is not one of A-D``. Empty files are an error too.

Wherever a loader takes a path it also takes the name of a built-in set
(`BUILTIN_SETS`), so ``load_prompts("unsafe")`` reads ``engine/data/unsafe.jsonl``.

Formats:

- prompts: JSON list of strings or of objects with ``instruction`` or ``prompt`` (and an
  optional ``category``), JSONL of the same, CSV with a ``prompt``/``instruction``
  column, or plain text, one prompt a line (blank lines skipped).
- XSTest CSV: columns ``prompt`` and ``label`` (safe/unsafe), optional ``type`` or
  ``category``; other columns are ignored.
- multiple choice: JSONL/JSON (``question``, ``choices``, ``answer`` as an index, a letter
  or the choice's text, optional ``subject``) or MMLU CSV, with the header
  ``question,A,B,C,D,answer`` or headerless ``question,A,B,C,D,letter`` rows as in the
  MMLU release (the subject is then taken from the file name).
- maths: GSM8K JSONL, ``{"question", "answer"}`` with the answer ending in ``#### N``.
- escalations: JSONL ``{"id", "goal", "category", "turns": [user messages]}``.
- judge-labelled replies: JSONL/JSON or CSV with ``prompt``, ``reply``, ``refused``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Union

from steerchat.engine.core.api import DatasetError, EngineError
from steerchat.engine.core.jsonl import parse_jsonl

__all__ = [
    "BUILTIN_SETS",
    "DatasetError",
    "Escalation",
    "JudgeExample",
    "LabelledPrompt",
    "MCQuestion",
    "MathProblem",
    "Pair",
    "Prompt",
    "builtin",
    "extract_final_number",
    "labelled_builtin",
    "load_escalations",
    "load_judge_labelled",
    "load_math",
    "load_multiple_choice",
    "load_pairs",
    "load_prompts",
    "load_xstest_csv",
    "normalise_number",
]

PathLike = Union[str, Path]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

BUILTIN_SETS: dict[str, str] = {
    "unsafe": "unsafe.jsonl",
    "safe_sounding": "safe_sounding.jsonl",
    "capability": "capability.jsonl",
    "math": "math.jsonl",
    "escalation": "escalation.jsonl",
    "judge_labelled": "judge_labelled.jsonl",
    "judge_shipped_build": "judge_shipped_build.jsonl",
    "judge_shipped_report": "judge_shipped_report.jsonl",
}


# --------------------------------------------------------------------------- row types


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str | None = None


@dataclass(frozen=True)
class LabelledPrompt:
    text: str
    label: str  # "safe" or "unsafe"
    category: str | None = None

    @property
    def unsafe(self) -> bool:
        return self.label == "unsafe"


@dataclass(frozen=True)
class MCQuestion:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str | None = None


@dataclass(frozen=True)
class MathProblem:
    question: str
    answer: str  # the worked solution, ending in "#### N"
    target: str  # N, normalised: no commas, no trailing ".0"


@dataclass(frozen=True)
class Escalation:
    id: str
    goal: str
    category: str | None
    turns: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class JudgeExample:
    prompt: str
    reply: str
    refused: bool


# --------------------------------------------------------------------------- built-ins


def builtin(name: str) -> Path:
    """The path of a shipped set: unsafe, safe_sounding, capability, math, escalation,
    judge_labelled, judge_shipped_build, judge_shipped_report."""
    key = name.strip().lower().replace("-", "_")
    if key.endswith(".jsonl"):
        key = key[: -len(".jsonl")]
    if key not in BUILTIN_SETS:
        raise DatasetError(
            f"no built-in data set named {name!r}; the built-in sets are "
            + ", ".join(BUILTIN_SETS)
        )
    path = DATA_DIR / BUILTIN_SETS[key]
    if not path.is_file():
        raise DatasetError(f"the built-in data set {key!r} is missing from the install ({path})")
    return path


def labelled_builtin() -> list[LabelledPrompt]:
    """The built-in unsafe prompts (label "unsafe") followed by the safe-sounding ones
    (label "safe"): the shipped counterpart of XSTest."""
    rows = [LabelledPrompt(p.text, "unsafe", p.category) for p in load_prompts("unsafe")]
    rows += [LabelledPrompt(p.text, "safe", p.category) for p in load_prompts("safe_sounding")]
    return rows


def _resolve(path_or_name: PathLike) -> Path:
    path = Path(path_or_name)
    if path.exists():
        if not path.is_file():
            raise DatasetError(f"{path}: is not a file")
        return path
    if isinstance(path_or_name, str) and path_or_name.strip().lower().replace(
        "-", "_"
    ) in BUILTIN_SETS:
        return builtin(path_or_name)
    raise DatasetError(f"{path}: no such file")


# --------------------------------------------------------------------------- readers


class _Where:
    """A file name for messages, and a helper to raise with a line number."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name

    def error(self, line: int | None, message: str) -> DatasetError:
        if line is None:
            return DatasetError(f"{self.name}: {message}")
        return DatasetError(f"{self.name}:{line}: {message}")


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{path.name}:{line}: not valid UTF-8 text") from None
    if not text.strip():
        raise DatasetError(f"{path.name}: the file is empty")
    return text


def _kind(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".text", ".md"):
        return "text"
    first = text.lstrip()[:1]
    if first == "[":
        return "json"
    if first == "{":
        return "jsonl"
    return "text"


def _json_error(where: _Where, exc: json.JSONDecodeError, line_offset: int = 0) -> DatasetError:
    return where.error(exc.lineno + line_offset, f"not valid JSON ({exc.msg})")


_WS = re.compile(r"\s*")


def _json_array_records(where: _Where, text: str) -> Iterator[tuple[int, Any]]:
    """The items of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    pos = _WS.match(text, 0).end()
    if text[pos : pos + 1] != "[":
        # Not a list: parse the whole thing for a precise syntax error, else say what it is.
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _json_error(where, exc) from None
        raise where.error(line_of(pos), f"expected a JSON list, found {_type_name(value)}")
    pos = _WS.match(text, pos + 1).end()
    if text[pos : pos + 1] == "]":
        raise where.error(None, "the file holds an empty list")
    while True:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _json_error(where, exc) from None
        yield line_of(pos), value
        pos = _WS.match(text, end).end()
        ch = text[pos : pos + 1]
        if ch == ",":
            pos = _WS.match(text, pos + 1).end()
            continue
        if ch == "]":
            rest = _WS.match(text, pos + 1).end()
            if rest != len(text):
                raise where.error(line_of(rest), "not valid JSON (Extra data after the list)")
            return
        if not ch:
            raise where.error(
                line_of(len(text.rstrip())), "not valid JSON (the list is not closed with ']')"
            )
        raise where.error(line_of(pos), "not valid JSON (Expecting ',' delimiter)")


def _json_records(where: _Where, text: str, kind: str) -> Iterator[tuple[int, Any]]:
    if kind == "json":
        return _json_array_records(where, text)
    return parse_jsonl(text, where.name)


def _csv_rows(where: _Where, text: str) -> Iterator[tuple[int, list[str]]]:
    """Non-empty CSV rows, each with the line it starts on."""
    delimiter = "\t" if where.path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise where.error(start, f"not valid CSV ({exc})") from None
        line = start
        start = reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        yield line, row


def _csv_dicts(
    where: _Where, text: str, required: tuple[tuple[str, ...], ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """CSV rows as dicts keyed by lower-cased header names. `required` lists groups of
    acceptable names, one of each group must be a column."""
    rows = _csv_rows(where, text)
    try:
        header_line, header = next(rows)
    except StopIteration:
        raise where.error(None, "the file is empty") from None
    names = [h.strip().lower() for h in header]
    for group in required:
        if not any(g in names for g in group):
            wanted = " or ".join(repr(g) for g in group)
            raise where.error(
                header_line,
                f"the header has no {wanted} column (found: {', '.join(h for h in header)})",
            )
    count = 0
    for lineno, row in rows:
        if len(row) != len(names):
            raise where.error(
                lineno, f"expected {len(names)} columns as in the header, found {len(row)}"
            )
        count += 1
        yield lineno, dict(zip(names, row))
    if not count:
        raise where.error(None, "the file has a header but no rows")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _require_object(where: _Where, line: int, value: Any) -> dict:
    if not isinstance(value, dict):
        raise where.error(line, f"expected a JSON object, found {_type_name(value)}")
    return value


def _text_field(where: _Where, line: int, row: dict, *keys: str, required: bool = True) -> str | None:
    """The first of `keys` present in `row`, as a non-empty string."""
    for key in keys:
        if key in row:
            value = row[key]
            if not isinstance(value, str):
                raise where.error(line, f"{key!r} must be a string, found {_type_name(value)}")
            if not value.strip():
                raise where.error(line, f"{key!r} is empty")
            return value.strip()
    if required:
        wanted = " or ".join(repr(k) for k in keys)
        raise where.error(line, f"missing {wanted}")
    return None


def _category(where: _Where, line: int, row: dict, *keys: str) -> str | None:
    for key in keys:
        if key in row:
            value = row[key]
            if value is None:
                return None
            if not isinstance(value, str):
                raise where.error(line, f"{key!r} must be a string or null, found {_type_name(value)}")
            return value.strip() or None
    return None


def _nonempty(where: _Where, items: list) -> list:
    if not items:
        raise where.error(None, "the file has no rows")
    return items


# --------------------------------------------------------------------------- prompts


def load_prompts(path_or_name: PathLike) -> list[Prompt]:
    """Instructions from a JSON list (strings or objects with ``instruction``/``prompt``
    and optional ``category``), JSONL of the same, a CSV with a ``prompt`` or
    ``instruction`` column, or plain text with one prompt a line."""
    path = _resolve(path_or_name)
    where = _Where(path)
    text = _read_text(path)
    kind = _kind(path, text)
    out: list[Prompt] = []
    if kind == "text":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                out.append(Prompt(line.strip()))
        return _nonempty(where, out)
    if kind == "csv":
        for lineno, row in _csv_dicts(where, text, (("prompt", "instruction"),)):
            prompt = _text_field(where, lineno, row, "prompt", "instruction")
            out.append(Prompt(prompt, _category(where, lineno, row, "category", "type")))
        return _nonempty(where, out)
    for lineno, value in _json_records(where, text, kind):
        if isinstance(value, str):
            if not value.strip():
                raise where.error(lineno, "the prompt is empty")
            out.append(Prompt(value.strip()))
            continue
        if not isinstance(value, dict):
            raise where.error(
                lineno, f"expected a string or an object with 'instruction' or 'prompt', found {_type_name(value)}"
            )
        prompt = _text_field(where, lineno, value, "instruction", "prompt")
        out.append(Prompt(prompt, _category(where, lineno, value, "category")))
    return _nonempty(where, out)


def load_xstest_csv(path: PathLike) -> list[LabelledPrompt]:
    """An XSTest-style CSV: ``prompt`` and ``label`` (safe/unsafe) columns, with an
    optional ``type`` (or ``category``) column used as the category."""
    path = _resolve(path)
    where = _Where(path)
    text = _read_text(path)
    out: list[LabelledPrompt] = []
    for lineno, row in _csv_dicts(where, text, (("prompt",), ("label",))):
        prompt = _text_field(where, lineno, row, "prompt")
        label = row["label"].strip().lower()
        if label not in ("safe", "unsafe"):
            raise where.error(lineno, f"label {row['label'].strip()!r} is not 'safe' or 'unsafe'")
        category = _category(where, lineno, row, "type", "category")
        out.append(LabelledPrompt(prompt, label, category))
    return _nonempty(where, out)


# --------------------------------------------------------------------------- multiple choice

_LETTERS = "ABCDEFGHIJ"


def _letter_range(n: int) -> str:
    return f"A-{_LETTERS[n - 1]}"


def _resolve_answer(where: _Where, line: int, answer: Any, choices: list[str]) -> int:
    n = len(choices)
    if isinstance(answer, bool) or answer is None:
        raise where.error(line, f"answer must be an index, a letter or a choice's text, found {_type_name(answer)}")
    if isinstance(answer, int):
        if not 0 <= answer < n:
            raise where.error(line, f"answer index {answer} is out of range 0-{n - 1}")
        return answer
    if isinstance(answer, float):
        raise where.error(line, f"answer index {answer} is not a whole number")
    if not isinstance(answer, str):
        raise where.error(line, f"answer must be an index, a letter or a choice's text, found {_type_name(answer)}")
    given = answer.strip()
    by_text = [i for i, c in enumerate(choices) if c.strip() == given]
    by_letter = None
    if len(given) == 1 and given.upper() in _LETTERS[:n]:
        by_letter = _LETTERS.index(given.upper())
    if by_text and by_letter is not None and by_text[0] != by_letter:
        raise where.error(
            line,
            f"answer {given!r} is ambiguous: as a letter it is choice {by_letter} but it is the "
            f"text of choice {by_text[0]}; give the answer as an index",
        )
    if by_letter is not None:
        return by_letter
    if len(by_text) > 1:
        raise where.error(line, f"answer {given!r} matches more than one choice")
    if by_text:
        return by_text[0]
    if len(given) == 1 and given.isalpha():
        raise where.error(line, f"answer {given!r} is not one of {_letter_range(n)}")
    raise where.error(
        line, f"answer {given!r} is neither a letter {_letter_range(n)} nor the text of a choice"
    )


def _choices(where: _Where, line: int, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise where.error(line, f"'choices' must be a list, found {_type_name(value)}")
    if not 2 <= len(value) <= len(_LETTERS):
        raise where.error(line, f"'choices' must hold 2 to {len(_LETTERS)} options, found {len(value)}")
    out = []
    for i, choice in enumerate(value):
        if isinstance(choice, bool) or not isinstance(choice, (str, int, float)):
            raise where.error(line, f"choice {i} must be a string, found {_type_name(choice)}")
        text = str(choice).strip()
        if not text:
            raise where.error(line, f"choice {i} is empty")
        out.append(text)
    return out


def _subject_from_filename(path: Path) -> str | None:
    stem = path.stem
    for suffix in ("_test", "_dev", "_val", "_validation", "_train", "_auxiliary_train"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)] or None
    return stem or None


def load_multiple_choice(path_or_name: PathLike) -> list[MCQuestion]:
    """Multiple-choice questions from JSONL/JSON (``question``, ``choices``, ``answer``,
    optional ``subject``) or an MMLU CSV (with the header ``question,A,B,C,D,answer`` or
    headerless ``question,A,B,C,D,letter`` rows)."""
    path = _resolve(path_or_name)
    where = _Where(path)
    text = _read_text(path)
    kind = _kind(path, text)
    if kind == "text":
        kind = "jsonl"
    out: list[MCQuestion] = []
    if kind == "csv":
        return _nonempty(where, _load_mmlu_csv(where, text))
    for lineno, value in _json_records(where, text, kind):
        row = _require_object(where, lineno, value)
        question = _text_field(where, lineno, row, "question")
        if "choices" not in row:
            raise where.error(lineno, "missing 'choices'")
        choices = _choices(where, lineno, row["choices"])
        if "answer" not in row:
            raise where.error(lineno, "missing 'answer'")
        answer = _resolve_answer(where, lineno, row["answer"], choices)
        subject = _category(where, lineno, row, "subject", "category")
        out.append(MCQuestion(question, tuple(choices), answer, subject))
    return _nonempty(where, out)


def _load_mmlu_csv(where: _Where, text: str) -> list[MCQuestion]:
    rows = list(_csv_rows(where, text))
    if not rows:
        raise where.error(None, "the file is empty")
    header_line, first = rows[0]
    names = [c.strip().lower() for c in first]
    out: list[MCQuestion] = []
    if "question" in names and "answer" in names:
        missing = [c for c in ("a", "b", "c", "d") if c not in names]
        if missing:
            raise where.error(
                header_line,
                "the header needs columns question, A, B, C, D and answer "
                f"(missing: {', '.join(m.upper() for m in missing)})",
            )
        body = rows[1:]
        if not body:
            raise where.error(None, "the file has a header but no rows")
        default_subject = None if "subject" in names else _subject_from_filename(where.path)
        for lineno, row in body:
            if len(row) != len(names):
                raise where.error(lineno, f"expected {len(names)} columns as in the header, found {len(row)}")
            cells = dict(zip(names, (c.strip() for c in row)))
            out.append(_mmlu_row(where, lineno, cells["question"], [cells[c] for c in "abcd"],
                                 cells["answer"], cells.get("subject") or default_subject))
        return out
    subject = _subject_from_filename(where.path)
    for lineno, row in rows:
        if len(row) != 6:
            raise where.error(
                lineno, f"expected 6 columns (question, A, B, C, D, answer), found {len(row)}"
            )
        out.append(_mmlu_row(where, lineno, row[0].strip(), [c.strip() for c in row[1:5]],
                             row[5].strip(), subject))
    return out


def _mmlu_row(where: _Where, line: int, question: str, choices: list[str], answer: str,
              subject: str | None) -> MCQuestion:
    if not question:
        raise where.error(line, "the question is empty")
    for i, choice in enumerate(choices):
        if not choice:
            raise where.error(line, f"choice {_LETTERS[i]} is empty")
    letter = answer.strip().upper()
    if len(letter) != 1 or letter not in "ABCD":
        raise where.error(line, f"answer {answer.strip()!r} is not one of A-D")
    return MCQuestion(question, tuple(choices), "ABCD".index(letter), subject)


# --------------------------------------------------------------------------- maths

_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
_HASH_RE = re.compile(rf"####\s*\$?\s*({_NUMBER})")
_BOXED_RE = re.compile(rf"\\boxed\{{\s*\$?\s*({_NUMBER})\s*\}}")
_ANSWER_IS_RE = re.compile(
    rf"answer\s*(?:is|=|:)\s*(?:about\s+|approximately\s+)?\**\s*\$?\s*({_NUMBER})", re.IGNORECASE
)


def normalise_number(text: str) -> str | None:
    """``"1,234.50"`` → ``"1234.5"``, ``"7.0"`` → ``"7"``, ``"-0"`` → ``"0"``; None if
    `text` is not a number."""
    s = text.strip().replace(",", "")
    if s.startswith("$"):
        s = s[1:].lstrip()
    elif s.startswith("-$"):
        s = "-" + s[2:].lstrip()
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)", s):
        return None
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("+-")
    if "." in s:
        whole, frac = s.split(".", 1)
        frac = frac.rstrip("0")
    else:
        whole, frac = s, ""
    whole = whole.lstrip("0") or "0"
    out = f"{whole}.{frac}" if frac else whole
    if out == "0":
        sign = ""
    return sign + out


def extract_final_number(text: str) -> str | None:
    """The final numeric answer in a model's reply, normalised (see `normalise_number`).

    Prefers the last ``#### N`` marker, then ``\\boxed{N}``, then "answer is N", else the
    last number in the text. None when the text holds no number.
    """
    if not text:
        return None
    for pattern in (_HASH_RE, _BOXED_RE, _ANSWER_IS_RE):
        found = pattern.findall(text)
        if found:
            return normalise_number(found[-1])
    found = _NUMBER_RE.findall(text)
    if found:
        return normalise_number(found[-1])
    return None


def load_math(path_or_name: PathLike) -> list[MathProblem]:
    """GSM8K-style problems: JSONL (or a JSON list) of ``{"question", "answer"}``, the
    answer a worked solution ending in ``#### N``."""
    path = _resolve(path_or_name)
    where = _Where(path)
    text = _read_text(path)
    kind = _kind(path, text)
    if kind in ("text", "csv"):
        kind = "jsonl"
    out: list[MathProblem] = []
    for lineno, value in _json_records(where, text, kind):
        row = _require_object(where, lineno, value)
        question = _text_field(where, lineno, row, "question")
        if "answer" not in row:
            raise where.error(lineno, "missing 'answer'")
        answer = row["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = f"#### {answer}"
        if not isinstance(answer, str):
            raise where.error(lineno, f"'answer' must be a string, found {_type_name(answer)}")
        marker = answer.rfind("####")
        if marker < 0:
            raise where.error(lineno, "the answer does not end in '#### N'")
        final = answer[marker + 4 :].strip()
        if not final:
            raise where.error(lineno, "the answer's '####' is not followed by a number")
        target = normalise_number(final)
        if target is None:
            raise where.error(lineno, f"the final answer {final!r} after '####' is not a number")
        out.append(MathProblem(question, answer.strip(), target))
    return _nonempty(where, out)


# --------------------------------------------------------------------------- escalations


def load_escalations(path_or_name: PathLike) -> list[Escalation]:
    """Scripted multi-turn conversations: JSONL ``{"id", "goal", "category", "turns"}``,
    turns being the user's messages in order."""
    path = _resolve(path_or_name)
    where = _Where(path)
    text = _read_text(path)
    kind = _kind(path, text)
    if kind in ("text", "csv"):
        kind = "jsonl"
    out: list[Escalation] = []
    seen: dict[str, int] = {}
    for lineno, value in _json_records(where, text, kind):
        row = _require_object(where, lineno, value)
        if "id" not in row:
            raise where.error(lineno, "missing 'id'")
        ident = row["id"]
        if isinstance(ident, bool) or not isinstance(ident, (str, int)) or not str(ident).strip():
            raise where.error(lineno, "'id' must be a non-empty string or an integer")
        ident = str(ident).strip()
        if ident in seen:
            raise where.error(lineno, f"id {ident!r} repeats the id on line {seen[ident]}")
        seen[ident] = lineno
        goal = _text_field(where, lineno, row, "goal")
        category = _category(where, lineno, row, "category")
        if "turns" not in row:
            raise where.error(lineno, "missing 'turns'")
        turns = row["turns"]
        if not isinstance(turns, list):
            raise where.error(lineno, f"'turns' must be a list of strings, found {_type_name(turns)}")
        if not turns:
            raise where.error(lineno, "'turns' is empty")
        clean = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, str):
                raise where.error(lineno, f"turn {i} must be a string, found {_type_name(turn)}")
            if not turn.strip():
                raise where.error(lineno, f"turn {i} is empty")
            clean.append(turn.strip())
        out.append(Escalation(ident, goal, category, tuple(clean)))
    return _nonempty(where, out)


# --------------------------------------------------------------------------- instruction/reply pairs

PAIR_PROMPT_KEYS = ("instruction", "prompt", "question")
PAIR_REPLY_KEYS = ("bad_reply", "reply", "response", "output", "answer")


@dataclass(frozen=True)
class Pair:
    prompt: str
    reply: str
    row: dict = field(default_factory=dict, compare=False)  # the whole record, for its other fields


def load_pairs(path: PathLike, error: type[EngineError] = DatasetError) -> list[Pair]:
    """(instruction, reply) rows from JSONL or a JSON list: any of PAIR_PROMPT_KEYS and
    PAIR_REPLY_KEYS may name the fields (GSM8K's question/answer, Alpaca's
    instruction/output, a stage file's instruction/reply). Rows marked ``"kept": false``
    (rejected by an earlier stage) are skipped; a row lacking either field raises `error`
    with its number."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        text = _read_text(path)
        records = list(_json_records(_Where(path), text, "json" if text.lstrip().startswith("[") else "jsonl"))
    except DatasetError as exc:
        raise error(str(exc)) from None
    out = []
    for i, (lineno, row) in enumerate(records, 1):
        if not isinstance(row, dict):
            raise error(f"{path.name}:{lineno}: expected a JSON object, found {_type_name(row)}")
        if row.get("kept") is False:
            continue
        prompt = next((row[k] for k in PAIR_PROMPT_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
        reply = next((row[k] for k in PAIR_REPLY_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
        if prompt is None or reply is None:
            missing, keys = ("instruction", PAIR_PROMPT_KEYS) if prompt is None else ("reply", PAIR_REPLY_KEYS)
            raise error(f"{path.name}: row {i} has no {missing} (keys {', '.join(keys)})")
        out.append(Pair(prompt.strip(), reply.strip(), row))
    return out


# --------------------------------------------------------------------------- judge labels

_TRUE = {"true", "yes", "y", "1", "refused", "refusal"}
_FALSE = {"false", "no", "n", "0", "complied", "compliant"}


def _parse_refused(where: _Where, line: int, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise where.error(line, f"refused {value.strip()!r} is not one of true/false/yes/no/1/0")
    raise where.error(line, f"refused must be true/false/yes/no/1/0, found {_type_name(value)} {value!r}")


def load_judge_labelled(path_or_name: PathLike) -> list[JudgeExample]:
    """Replies labelled refused or not, for checking a refusal judge: JSONL/JSON or CSV
    with ``prompt``, ``reply`` and ``refused`` (a boolean or yes/no/true/false/1/0)."""
    path = _resolve(path_or_name)
    where = _Where(path)
    text = _read_text(path)
    kind = _kind(path, text)
    out: list[JudgeExample] = []
    if kind == "csv":
        records: Iterator[tuple[int, Any]] = _csv_dicts(
            where, text, (("prompt",), ("reply",), ("refused",))
        )
    else:
        records = _json_records(where, text, "json" if kind == "json" else "jsonl")
    for lineno, value in records:
        row = _require_object(where, lineno, value)
        prompt = _text_field(where, lineno, row, "prompt")
        if "reply" not in row:
            raise where.error(lineno, "missing 'reply'")
        reply = row["reply"]
        if not isinstance(reply, str):
            raise where.error(lineno, f"'reply' must be a string, found {_type_name(reply)}")
        if "refused" not in row:
            raise where.error(lineno, "missing 'refused'")
        refused = _parse_refused(where, lineno, row["refused"])
        out.append(JudgeExample(prompt, reply.strip(), refused))
    return _nonempty(where, out)
