"""The engine's surface as the UI sees it: settings, progress, errors and the session protocol.

Pure Python (no torch), so `tui` can type against it and tests can build a fake engine
that behaves like `engine.runtime.session.Session`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Protocol

from steerchat.engine.core.levels import LevelScale, SafetySettings
from steerchat.engine.core.trace import TurnTrace


class EngineError(Exception):
    """An error with a message meant for the user (one sentence, no traceback)."""


class ModelNotAvailable(EngineError):
    """The model is not on disk and cannot be downloaded (offline, or no such repo)."""


class DatasetError(EngineError):
    """A data file that cannot be used; the message names the file, the line and the fault."""


class SAEFileError(EngineError):
    """An SAE folder or file that cannot be used; the message names the file and the fault."""


@dataclass
class SamplingSettings:
    """How replies are decoded. None in temperature, top_p, top_k or repetition_penalty means
    "the model's own (its generation config), else steerchat's" (greedy, no top-p/top-k, no
    penalty); `resolve_sampling` turns them into the values a turn uses."""

    temperature: float | None = None  # 0 means greedy
    top_p: float | None = None
    max_new_tokens: int = 256
    seed: int | None = 0
    repetition_penalty: float | None = None
    top_k: int | None = None  # 0 means no top-k
    loop_guard: bool = True  # end a reply caught repeating itself (engine.runtime.loopguard)

    @property
    def greedy(self) -> bool:
        return (self.temperature or 0.0) <= 0


# steerchat's own decoding when neither the user nor the model says: greedy
STEERCHAT_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0}


def model_sampling_defaults(generation_config) -> dict[str, float | int]:
    """The sampling a model's own `generation_config` asks for, as SamplingSettings fields.

    Temperature, top-p and top-k count only when the config samples (`do_sample`), as in
    transformers' `generate()`; a repetition penalty other than 1 counts either way. A
    config that sets none of them (a GGUF starter's, say) gives {}.
    """
    if generation_config is None:
        return {}
    out: dict[str, float | int] = {}
    if getattr(generation_config, "do_sample", False):
        temperature = getattr(generation_config, "temperature", None)
        temperature = 1.0 if temperature is None else float(temperature)
        if temperature > 0:
            out["temperature"] = temperature
            top_p = getattr(generation_config, "top_p", None)
            if top_p is not None and 0 < float(top_p) <= 1:
                out["top_p"] = float(top_p)
            top_k = getattr(generation_config, "top_k", None)
            if top_k is not None and int(top_k) >= 0:
                out["top_k"] = int(top_k)
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is not None and float(penalty) > 0 and float(penalty) != 1.0:
        out["repetition_penalty"] = float(penalty)
    return out


def resolve_sampling(user: SamplingSettings, model_defaults: dict | None = None) -> SamplingSettings:
    """The settings a turn decodes with: each field the user set (not None), else the model's
    own (`model_sampling_defaults`), else steerchat's (greedy)."""
    model_defaults = model_defaults or {}
    kw = {}
    for key, ours in STEERCHAT_SAMPLING.items():
        value = getattr(user, key)
        kw[key] = value if value is not None else model_defaults.get(key, ours)
    return replace(user, **kw)


@dataclass
class LoadProgress:
    """A step of loading, for a progress bar. `total` is None when unknown."""

    stage: str  # "download", "convert", "load", "quantise", "sae", "ready"
    message: str
    done: float = 0.0
    total: float | None = None


ProgressCallback = Callable[[LoadProgress], None]
TokenCallback = Callable[[str], None]


class ChatSession(Protocol):
    """What the UI calls. `engine.runtime.session.Session` implements it; tests fake it."""

    model_name: str
    sae_name: str | None
    adapter_name: str | None
    levels: LevelScale
    settings: SafetySettings  # read at every decoding step; assign to move the slider
    system_prompt: str | None
    sampling: SamplingSettings

    def send(
        self, text: str, on_token: TokenCallback | None = None, cancel: threading.Event | None = None
    ) -> TurnTrace:
        """Run one turn; appends the user message and the (possibly partial) reply to history."""

    def regenerate(
        self, on_token: TokenCallback | None = None, cancel: threading.Event | None = None
    ) -> TurnTrace:
        """Replace the last reply with a fresh one to the same user message."""

    def rerun(
        self,
        turn_index: int,
        settings: SafetySettings,
        on_token: TokenCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> TurnTrace:
        """Answer turn `turn_index`'s user message again under `settings`; history unchanged."""

    def set_history(self, turns: list[tuple[str, str]]) -> None:
        """Replace the history with (user, assistant) pairs, e.g. from a saved chat."""

    def clear(self) -> None:
        """Forget the history."""
