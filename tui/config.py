"""Settings in `config.toml`: model, SAE, default level, system prompt, theme, sampling.

A malformed file never stops the app: `load_config` returns the defaults (or the keys
that were valid) plus one message naming the file, the line and the fault. A TOML syntax
error drops only the lines that do not parse (re-parsing without them), bytes that are not
UTF-8 read as U+FFFD, and a sampling value out of range falls back to its default alone.
Saving keeps the user's comments and unknown keys (tomlkit), and a file that did not parse
is copied to `config.toml.bak-<timestamp>` before it is ever overwritten.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomlkit
import tomllib
from steerchat.engine.core.api import SamplingSettings
from steerchat.engine.core.paths import get_paths
from steerchat.models import DEFAULT_MODEL


@dataclass
class Config:
    """What the app starts with. CLI flags override these for one run."""

    model: str = DEFAULT_MODEL
    sae: str | None = "auto"
    adapter: str | None = None
    level: str | None = None  # None: the model's own default (its first level)
    system: str | None = None
    quant: str = "auto"
    theme: str = "textual-dark"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


_STRING_KEYS = ("model", "sae", "adapter", "level", "system", "quant", "theme")
_SAMPLING_TYPES = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_new_tokens": (int,),
    "seed": (int,),
    "repetition_penalty": (int, float),
    "top_k": (int,),
    "loop_guard": (bool,),
}


# Each sampling key's valid range, as (test, what the warning says it must be).
_SAMPLING_RANGES = {
    "temperature": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "top_p": (lambda v: math.isfinite(v) and 0 < v <= 1, "a number above 0 and at most 1"),
    "max_new_tokens": (lambda v: v >= 1, "a whole number >= 1"),
    "repetition_penalty": (lambda v: math.isfinite(v) and v > 0, "a finite number above 0"),
    "top_k": (lambda v: v >= 0, "a whole number >= 0 (0: no top-k)"),
}
_BAD_LINE = "# steerchat: this line did not parse and is kept as a comment: "
_MAX_DROPPED = 200


def _error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    match = re.search(r"line (\d+)", str(exc))
    return int(match.group(1)) if match else None


def _recover(text: str) -> tuple[dict[str, Any] | None, str, list[int]]:
    """Parse `text`; on a syntax error drop the offending line and try again.

    Returns (data or None when nothing could be recovered, the text with the dropped lines
    turned into comments, the dropped line numbers).
    """
    lines = text.splitlines()
    dropped: list[int] = []
    while True:
        try:
            data = tomllib.loads("\n".join(lines))
        except tomllib.TOMLDecodeError as exc:
            line = _error_line(exc)
            if line is None or not 1 <= line <= len(lines) or len(dropped) >= _MAX_DROPPED \
                    or lines[line - 1].startswith(_BAD_LINE):
                return None, text, dropped
            lines[line - 1] = _BAD_LINE + lines[line - 1]
            dropped.append(line)
            continue
        return data, "\n".join(lines) + "\n", dropped


def _read_text(path: Path) -> tuple[str, bool]:
    """The file's text and whether it was valid UTF-8 (invalid bytes become U+FFFD)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


def config_path() -> Path:
    """The config file's location (platformdirs, or under STEERCHAT_HOME)."""
    return get_paths().config_file


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(f"{key} ") or line.strip().startswith(f"{key}="):
            return number
    return None


def load_config(path: Path | None = None) -> tuple[Config, str | None]:
    """Read the config; return it and a user-facing warning, or None when all was well.

    A missing file is not an error. A TOML syntax error gives the defaults; a key with
    the wrong type or an unknown key is skipped, and the message names its line.
    """
    path = path or config_path()
    config = Config()
    try:
        text, utf8 = _read_text(path)
    except FileNotFoundError:
        return config, None
    except OSError as exc:
        return config, f"Could not read {path}: {exc.strerror}; using the default settings."
    notes: list[str] = []  # whole-file faults, said before the per-key problems
    if not utf8:
        bad = next(n for n, line in enumerate(text.splitlines(), start=1) if "\ufffd" in line)
        notes.append(f"{path} line {bad} is not valid UTF-8 (the bad bytes read as \ufffd)")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        data, _, dropped = _recover(text)
        if data is None:
            # tomllib's message already says "(at line N, column M)".
            return config, f"{path} is not valid TOML: {exc}; using the default settings."
        where = ", ".join(str(n) for n in dropped)
        notes.append(f"{path} is not valid TOML: {exc}; line{'s' if len(dropped) > 1 else ''} {where} "
                     f"ignored, the rest kept")

    problems: list[str] = []

    def problem(key: str, what: str) -> None:
        line = _line_of(text, key)
        where = f" line {line}" if line else ""
        problems.append(f"{path}{where}: {what}")

    for key, value in data.items():
        if key == "sampling":
            if not isinstance(value, dict):
                problem(key, "'sampling' must be a table")
                continue
            for skey, svalue in value.items():
                types = _SAMPLING_TYPES.get(skey)
                if types is None:
                    problem(skey, f"unknown sampling setting '{skey}'")
                elif types == (bool,) and not isinstance(svalue, bool):
                    problem(skey, f"'{skey}' must be true or false")
                elif types != (bool,) and (isinstance(svalue, bool) or not isinstance(svalue, types)):
                    problem(skey, f"'{skey}' must be a number")
                elif skey in _SAMPLING_RANGES and not _SAMPLING_RANGES[skey][0](svalue):
                    problem(skey, f"'{skey}' must be {_SAMPLING_RANGES[skey][1]}, not {svalue!r}")
                else:
                    setattr(config.sampling, skey, svalue)
        elif key in _STRING_KEYS:
            if not isinstance(value, str):
                problem(key, f"'{key}' must be a string")
            else:
                # An empty string means "none" for the optional settings.
                setattr(config, key, value or (None if key in ("sae", "adapter", "level", "system") else value))
        else:
            problem(key, f"unknown setting '{key}'")
    if problems:
        notes.append("; ".join(problems) + " (ignored, defaults used for it)")
    if not notes:
        return config, None
    return config, "; ".join(notes) + "."


def backup_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}")


def _document(path: Path) -> tomlkit.TOMLDocument:
    """The existing file as a tomlkit document (comments and unknown keys kept).

    A file that is not valid UTF-8 or TOML is first copied to `config.toml.bak-<timestamp>`;
    the document is then what could be recovered, the bad lines kept as comments.
    """
    try:
        text, utf8 = _read_text(path)
    except FileNotFoundError:
        return tomlkit.document()
    try:
        tomllib.loads(text)
        ok = utf8
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        shutil.copy2(path, backup_path(path))
        text = _recover(text)[1] if _recover(text)[0] is not None else \
            "".join(_BAD_LINE + line + "\n" for line in text.splitlines())
    try:
        return tomlkit.parse(text)
    except Exception:  # tomlkit stricter than tomllib somewhere: keep the old text as comments
        return tomlkit.parse("".join("# " + line + "\n" for line in text.splitlines()))


def _set(table: Any, key: str, value: Any) -> None:
    if value is None:
        if key in table:
            del table[key]
    elif key not in table or table[key] != value:
        table[key] = value


def save_config(config: Config, path: Path | None = None) -> Path:
    """Write the config as TOML (None values are left out), keeping comments and unknown keys."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _document(path)
    for f in fields(Config):
        value = getattr(config, f.name)
        if f.name == "sampling":
            if not isinstance(doc.get("sampling"), dict):
                if "sampling" in doc:
                    del doc["sampling"]
                doc["sampling"] = tomlkit.table()
            for key, svalue in asdict(value).items():
                _set(doc["sampling"], key, svalue)
        else:
            _set(doc, f.name, value)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomlkit.dumps(doc), encoding="utf-8")
    tmp.replace(path)  # atomic, so a crash never leaves half a config
    return path


def merge_overrides(config: Config, **overrides: Any) -> Config:
    """A copy of `config` with every non-None override applied (the CLI flags)."""
    kw = {f.name: getattr(config, f.name) for f in fields(Config)}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**kw)
