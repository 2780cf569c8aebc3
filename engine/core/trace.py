"""One chat turn as data: what the model saw, what it wrote, and what the SAE saw.

A `TurnTrace` is produced by `engine.Session.send()` at the end of every turn. It is
plain data (no tensors) so the UI can render it, the store can save it and
`steerchat ask --json` can print it. `to_json()` / `from_json()` round-trip exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class FeatureStat:
    """How one SAE feature behaved over a span of tokens (the prompt or the reply)."""

    feature: int
    max: float
    mean: float  # mean activation over the positions where the feature fired
    count: int  # positions where it fired
    label: str | None = None


@dataclass
class TokenFeatures:
    """The top active features at one token position."""

    index: int  # position in the full sequence
    token: str
    span: str  # "prompt" or "reply"
    features: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RefusalFeatureState:
    """One refusal feature: how active it was on its own, and where steering put it."""

    feature: int
    reference_activation: float  # m_f: the clamp target at s = 1 (see engine.pipelines.refusal_features)
    natural_prompt_max: float  # the SAE's own reading on the prompt, before any clamp
    natural_reply_max: float
    natural_reply_mean: float
    target: float | None  # clamp target c_f at the end of the turn, None when not clamped
    label: str | None = None


@dataclass
class Verdict:
    """The refusal judge's decision and the evidence behind it."""

    refused: bool
    score: float
    evidence: list[str] = field(default_factory=list)
    phrase: str | None = None  # the refusal phrase that matched, if any
    opening_log_odds: float | None = None  # log-odds of refusal openings at reply position 0


@dataclass
class GateDecision:
    """Conditional steering: the harm score of the prompt against its threshold."""

    score: float
    threshold: float
    open: bool
    method: str = "features"
    top_tokens: list[tuple[str, float]] = field(default_factory=list)  # prompt tokens that pushed the score up most
    # the tokens that pushed it down most (a probe's per-token shares can be negative)
    bottom_tokens: list[tuple[str, float]] = field(default_factory=list)
    # the parts the score is the sum of, e.g. [("user tokens", 1.2), ("template tokens", -0.4), ("bias", 0.1)]
    signals: list[tuple[str, float]] = field(default_factory=list)
    # the lowering side's threshold (Open, two-sided levels push refusal down only below it) and
    # whether the score was below it; None where the gate has no separate one
    benign_threshold: float | None = None
    benign: bool | None = None


@dataclass
class Timings:
    load_s: float = 0.0
    first_token_s: float = 0.0
    total_s: float = 0.0
    tokens_per_s: float = 0.0
    prompt_tokens: int = 0
    reply_tokens: int = 0
    context_tokens: int = 0  # the model's context limit (0: unknown)
    threads: int = 0  # CPU threads torch decoded with (the cores idle when the turn started)


@dataclass
class TurnTrace:
    """Everything about one turn. Produced by the engine, rendered by the UI, saved by the store."""

    prompt: str
    reply: str
    level: str
    guidance_mode: str
    guidance_text: str | None
    strength: float
    conditional: bool
    model: str
    # a two-sided level: where the gate stays closed, refusal features are clamped down to this × m_f
    open_strength: float | None = None
    # steering pushed the refusal features down on this turn (Open, or a two-sided level whose gate
    # stayed closed): a refusal then is the model's own, against the push
    lowered: bool = False
    # the level only ever lowers refusal (Open), at this strength, where the gate says benign
    lowering_only: bool = False
    sae: str | None = None
    adapter: str | None = None
    hook_layer: int | None = None
    stopped: bool = False  # cancelled by the user before the model finished
    error: str | None = None  # the reply broke off with this error
    loop_stopped: bool = False  # the loop guard ended the reply: it was repeating itself
    # a steered reply that refused: how the same prompt opens with steering off (a few greedy
    # tokens) and whether that opening refuses, so the turn can say whose refusal it was
    unsteered_opening: str | None = None
    unsteered_refused: bool | None = None
    level_changes: list[tuple[int, str]] = field(default_factory=list)  # (reply token index, level)
    tokens: list[TokenFeatures] = field(default_factory=list)
    prompt_features: list[FeatureStat] = field(default_factory=list)
    reply_features: list[FeatureStat] = field(default_factory=list)
    refusal_features: list[RefusalFeatureState] = field(default_factory=list)
    verdict: Verdict | None = None
    gate: GateDecision | None = None
    timings: Timings = field(default_factory=Timings)
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TurnTrace":
        kw = dict(data)
        kw["level_changes"] = [tuple(x) for x in kw.get("level_changes", [])]
        kw["tokens"] = [
            TokenFeatures(**{**t, "features": [tuple(f) for f in t["features"]]})
            for t in kw.get("tokens", [])
        ]
        kw["prompt_features"] = [FeatureStat(**f) for f in kw.get("prompt_features", [])]
        kw["reply_features"] = [FeatureStat(**f) for f in kw.get("reply_features", [])]
        kw["refusal_features"] = [RefusalFeatureState(**f) for f in kw.get("refusal_features", [])]
        if kw.get("verdict") is not None:
            kw["verdict"] = Verdict(**kw["verdict"])
        if kw.get("gate") is not None:
            gate = dict(kw["gate"])
            gate["top_tokens"] = [tuple(t) for t in gate.get("top_tokens", [])]
            gate["bottom_tokens"] = [tuple(t) for t in gate.get("bottom_tokens", [])]
            gate["signals"] = [tuple(t) for t in gate.get("signals", [])]
            gate = {k: v for k, v in gate.items() if k in {f.name for f in fields(GateDecision)}}
            kw["gate"] = GateDecision(**gate)
        kw["timings"] = Timings(**kw.get("timings", {}))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "TurnTrace":
        return cls.from_dict(json.loads(text))

    def feature_heat(self, feature: int) -> list[tuple[str, str, float]]:
        """(token, span, activation) for every position; 0 where `feature` was not in the top list."""
        out = []
        for t in self.tokens:
            act = next((a for f, a in t.features if f == feature), 0.0)
            out.append((t.token, t.span, act))
        return out
