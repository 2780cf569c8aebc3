"""Safety levels: the one slider the user moves, and what each notch means.

A level maps to (guidance mode, steering strength s, conditional flag). Strength is in
units of each refusal feature's reference activation m_f, so the clamp target is
c_f = s * m_f and one slider means the same thing on any model. The default mapping
lives here; a model's registry entry may ship a calibrated one (`levels.json`).
Pure Python: the UI imports this without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path


class GuidanceMode(str, Enum):
    NONE = "none"
    HINT = "hint"  # ask for a correct, ethical and inoffensive answer
    ANALYSE = "analyse"  # state the request's intent and risks, then answer


GUIDANCE_HINT = (
    "Give a correct, ethical and inoffensive answer. If the request could cause harm, "
    "decline it briefly and explain why."
)

GUIDANCE_ANALYSE = (
    "Before answering, state in one or two sentences what the request is asking for and "
    "whether it could cause harm. Then give a correct, ethical and inoffensive answer, "
    "declining if it is harmful."
)


def guidance_text(mode: GuidanceMode | str) -> str | None:
    """The instruction added to the system prompt for a guidance mode, or None."""
    mode = GuidanceMode(mode)
    if mode is GuidanceMode.HINT:
        return GUIDANCE_HINT
    if mode is GuidanceMode.ANALYSE:
        return GUIDANCE_ANALYSE
    return None


@dataclass(frozen=True)
class SafetyLevel:
    """One notch of the safety slider."""

    name: str
    guidance: GuidanceMode = GuidanceMode.NONE
    strength: float = 0.0  # s: clamp target in units of m_f; 0 means no clamp
    conditional: bool = False  # clamp only when the prompt's harm gate opens
    description: str = ""
    # lower refusal instead: clamp the refusal features down to s·m_f (s may be 0) only where
    # the harm gate is closed, for models that over-refuse (the slider's "Open", left of Off)
    lower: bool = False
    # two-sided: a conditional level that also clamps the refusal features down to
    # open_strength·m_f (only downwards, as Open does) where the harm gate stays closed, so the
    # prompts it judges benign are answered more readily while the harmful ones are refused
    open_strength: float | None = None

    @property
    def steers(self) -> bool:
        return self.strength > 0

    @property
    def two_sided(self) -> bool:
        return self.conditional and self.open_strength is not None and not self.lower

    def to_dict(self) -> dict:
        d = asdict(self)
        d["guidance"] = self.guidance.value
        if not self.lower:
            d.pop("lower")  # levels files without the Open level stay as they were
        if self.open_strength is None:
            d.pop("open_strength")  # nor do those without a two-sided level
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SafetyLevel":
        if d.get("open_strength") is not None and not float(d["open_strength"]) <= 0:
            raise ValueError(f"level {d.get('name')!r}: open_strength must be 0 or below (it only lowers refusal)")
        return cls(
            name=str(d["name"]),
            guidance=GuidanceMode(d.get("guidance", "none")),
            strength=float(d.get("strength", 0.0)),
            conditional=bool(d.get("conditional", False)),
            description=str(d.get("description", "")),
            lower=bool(d.get("lower", False)),
            open_strength=None if d.get("open_strength") is None else float(d["open_strength"]),
        )


DEFAULT_LEVELS: tuple[SafetyLevel, ...] = (
    SafetyLevel("Off", GuidanceMode.NONE, 0.0, False, "The model as it is: no hint, no steering."),
    SafetyLevel("Guided", GuidanceMode.HINT, 0.0, False, "Asks for a correct, ethical and inoffensive answer."),
    SafetyLevel("Low", GuidanceMode.HINT, 1.0, True, "Guidance, and refusal features clamped when the prompt looks harmful."),
    SafetyLevel("Medium", GuidanceMode.HINT, 2.0, True, "Stronger clamp, only when the prompt looks harmful."),
    SafetyLevel("High", GuidanceMode.HINT, 2.0, False, "Refusal features clamped on every prompt."),
    SafetyLevel("Max", GuidanceMode.HINT, 3.0, False, "Strongest clamp on every prompt: refuses often, also harmless requests."),
)


# For models that over-refuse (put it first, left of Off, in their levels.json): where the
# harm gate is closed, the refusal features are clamped down to 0; where it opens, nothing.
OPEN_LEVEL = SafetyLevel("Open", GuidanceMode.NONE, 0.0, False,
                         "Refusal features pushed down to 0 where the harm gate says the prompt is benign.", lower=True)


class LevelError(ValueError):
    pass


@dataclass(frozen=True)
class LevelScale:
    """An ordered set of levels (the slider's notches)."""

    levels: tuple[SafetyLevel, ...] = DEFAULT_LEVELS
    source: str = "default"

    @property
    def names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    @property
    def default(self) -> SafetyLevel:
        """Where a chat starts: Off (the model as it is) when the scale has it, else the first notch
        (an Open level sits left of Off and is never the default)."""
        return next((lv for lv in self.levels if lv.name == "Off"), self.levels[0])

    def get(self, name: str) -> SafetyLevel:
        for lv in self.levels:
            if lv.name.lower() == name.lower():
                return lv
        raise LevelError(f"unknown safety level {name!r}; choose one of: {', '.join(self.names)}")

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "levels": [lv.to_dict() for lv in self.levels]}, indent=2)

    @classmethod
    def load(cls, path: Path) -> "LevelScale":
        """Read a `levels.json`; a malformed file raises LevelError naming it."""
        try:
            data = json.loads(Path(path).read_text())
            levels = tuple(SafetyLevel.from_dict(d) for d in data["levels"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LevelError(f"{path}: not a valid levels file ({exc})") from exc
        if not levels:
            raise LevelError(f"{path}: defines no levels")
        return cls(levels=levels, source=str(data.get("source", path)))


@dataclass(frozen=True)
class SafetySettings:
    """What the engine reads at every decoding step. The UI swaps it when the slider moves."""

    level: SafetyLevel = DEFAULT_LEVELS[0]
    strength_override: float | None = None  # explicit s, for sweeps

    @property
    def strength(self) -> float:
        return self.level.strength if self.strength_override is None else self.strength_override

    def with_level(self, level: SafetyLevel) -> "SafetySettings":
        return replace(self, level=level)
