"""Settings in `config.toml`: model, SAE, default level, system prompt, theme, sampling.

A malformed file never stops the app: `load_config` returns the defaults (or the keys
that were valid) plus one message naming the file, the line and the fault.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w
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
}


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return config, None
    except OSError as exc:
        return config, f"Could not read {path}: {exc.strerror}; using the default settings."
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already says "(at line N, column M)".
        return config, f"{path} is not valid TOML: {exc}; using the default settings."

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
                elif isinstance(svalue, bool) or not isinstance(svalue, types):
                    problem(skey, f"'{skey}' must be a number")
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
    if not problems:
        return config, None
    return config, "; ".join(problems) + " (ignored, defaults used for it)."


def save_config(config: Config, path: Path | None = None) -> Path:
    """Write the config as TOML (None values are left out); return the path."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    for f in fields(Config):
        value = getattr(config, f.name)
        if f.name == "sampling":
            data["sampling"] = {k: v for k, v in asdict(value).items() if v is not None}
        elif value is not None:
            data[f.name] = value
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    tmp.replace(path)  # atomic, so a crash never leaves half a config
    return path


def merge_overrides(config: Config, **overrides: Any) -> Config:
    """A copy of `config` with every non-None override applied (the CLI flags)."""
    kw = {f.name: getattr(config, f.name) for f in fields(Config)}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**kw)
