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
    # weight format for one chat's decoding on the CPU: "int8" (weight-only int8 linear layers over
    # cpu_dtype activations, engine/runtime/weights.py) or "none"; batched pipelines load dense weights
    cpu_quant: str = "none"
    hook_layer: int = 0
    sae: str = ""
    features: str = ""
    levels: str = ""
    notes: str = ""
    # a published SAE, downloaded in its publisher's layout (engine/runtime/sae_formats.py)
    sae_repo: str = ""      # Hugging Face repo id
    sae_hub_path: str = ""  # folder inside the repo; {layer} is replaced by hook_layer
    sae_format: str = ""    # saelens, gemma-scope-2 or llama-scope
    prepared: bool = False  # made by `steerchat prepare` (lives under the user data folder)
    size_mb: int = 0        # offline models: size of the shipped wheels, for the offline screen
    cpu_tok_s: float = 0.0  # offline models: measured CPU decode speed, for the offline screen

    @property
    def user_dir(self) -> Path:
        """<data>/models/<name>: where `steerchat prepare` and published-SAE downloads put this
        model's SAE, features.json, labels.json and levels.json."""
        return user_models_dir() / self.name

    def _artifact(self, rel: str, fallback: str) -> Path | None:
        if rel:
            path = MODELS_DIR / rel
            if path.exists():
                return path
        path = self.user_dir / fallback
        return path if path.exists() else None

    @property
    def sae_path(self) -> Path | None:
        return self._artifact(self.sae, "sae")

    @property
    def features_path(self) -> Path | None:
        return self._artifact(self.features, "features.json")

    @property
    def levels_path(self) -> Path | None:
        """Where calibrated levels are read from (and written to, by `steerchat eval --calibrate`):
        the shipped file, else the user data folder's (for prepared models)."""
        if self.levels:
            return MODELS_DIR / self.levels
        return self.user_dir / "levels.json"

    @property
    def has_published_sae(self) -> bool:
        return bool(self.sae_repo)

    @property
    def is_gguf_wheel(self) -> bool:
        return self.source.startswith(("gguf:", "gguf-parts:"))


@lru_cache(maxsize=1)
def registry() -> dict[str, ModelEntry]:
    data = tomllib.loads((MODELS_DIR / "registry.toml").read_text())
    return {name: ModelEntry(name=name, **fields) for name, fields in data.items()}


def user_models_dir() -> Path:
    """<data>/models: prepared models and downloaded published SAEs."""
    from steerchat.engine.core.paths import get_paths  # plain data, no torch

    return get_paths().data_dir / "models"


PREPARED_ENTRY = "model.toml"


def prepared_entry(name: str) -> ModelEntry | None:
    """A model made steerable by `steerchat prepare` (<data>/models/<name>/model.toml), or None."""
    path = user_models_dir() / name / PREPARED_ENTRY
    if not path.is_file():
        return None
    try:
        fields = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    known = set(ModelEntry.__dataclass_fields__) - {"name"}
    return ModelEntry(name=name, **{k: v for k, v in fields.items() if k in known})


def get_entry(name: str) -> ModelEntry | None:
    """The registry entry called `name` (case-insensitive), else a prepared model's, or None."""
    entry = registry().get(name.lower())
    if entry is not None:
        return entry
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    return prepared_entry(name.lower())
