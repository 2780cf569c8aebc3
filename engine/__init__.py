"""steerchat's engine: model loading, the SAE, the steering hook, chat turns and their traces.

Everything that touches torch lives here, and nothing here imports Textual. Heavy
modules are imported lazily so that `engine.core.trace`, `engine.core.levels` and `engine.core.api`
stay cheap for the UI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from steerchat.engine.core.api import (
    EngineError,
    LoadProgress,
    ModelNotAvailable,
    SAEFileError,
    SamplingSettings,
)
from steerchat.engine.core.levels import (
    DEFAULT_LEVELS,
    GuidanceMode,
    LevelScale,
    SafetyLevel,
    SafetySettings,
)
from steerchat.engine.core.trace import TurnTrace

if TYPE_CHECKING:
    from steerchat.engine.runtime.sae import SAE
    from steerchat.engine.runtime.session import Session, open_session

_LAZY = {
    "SAE": "steerchat.engine.runtime.sae",
    "Session": "steerchat.engine.runtime.session",
    "open_session": "steerchat.engine.runtime.session",
    "SteeringHook": "steerchat.engine.runtime.steering",
    "judge_refusal": "steerchat.engine.runtime.judge",
}

__all__ = [
    "DEFAULT_LEVELS",
    "EngineError",
    "GuidanceMode",
    "LevelScale",
    "LoadProgress",
    "ModelNotAvailable",
    "SAEFileError",
    "SafetyLevel",
    "SafetySettings",
    "SamplingSettings",
    "TurnTrace",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
