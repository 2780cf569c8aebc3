"""The engine's surface as the UI sees it: settings, progress, errors and the session protocol.

Pure Python (no torch), so `tui` can type against it and tests can build a fake engine
that behaves like `engine.runtime.session.Session`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
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
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = 0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


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
