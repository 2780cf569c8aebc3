"""The model registry (`registry.toml`) and the artifacts shipped for each model.

Pure Python: the UI lists models without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import tomllib

MODELS_DIR = Path(__file__).resolve().parent
STARTER = "smollm2-135m"
DEFAULT_MODEL = "phi-3-mini"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    source: str
    quant: str = "none"
    cpu_dtype: str = "float32"
    hook_layer: int = 0
    sae: str = ""
    features: str = ""
    levels: str = ""
    notes: str = ""

    def _artifact(self, rel: str) -> Path | None:
        if not rel:
            return None
        path = MODELS_DIR / rel
        return path if path.exists() else None

    @property
    def sae_path(self) -> Path | None:
        return self._artifact(self.sae)

    @property
    def features_path(self) -> Path | None:
        return self._artifact(self.features)

    @property
    def levels_path(self) -> Path | None:
        """Where calibrated levels are read from (and written to, by `steerchat eval --calibrate`)."""
        return MODELS_DIR / self.levels if self.levels else None

    @property
    def is_gguf_wheel(self) -> bool:
        return self.source.startswith("gguf:")


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelEntry]:
    data = tomllib.loads((MODELS_DIR / "registry.toml").read_text())
    return {name: ModelEntry(name=name, **fields) for name, fields in data.items()}


def get_entry(name: str) -> ModelEntry | None:
    """The registry entry called `name` (case-insensitive), or None."""
    return registry().get(name.lower())
