"""The steering hook: reads the residual stream through the SAE and clamps refusal features.

It sits on the output of decoder layer L (the SAE's hook point). On every forward pass,
the prefill and each cached decode step, it encodes the residual once, records each
position's top active features, and, where asked, clamps the refusal features:

    x' = x + sum_f (c_f - a_f(x)) * W_dec[f]

which equals decoding the clamped code plus the SAE's error term. A conditional clamp
applies only to the rows whose harm gate opened; a two-sided one also lowers the rows whose
gate stayed closed, x' = x + sum_f min(c'_f - a_f, 0) W_dec[f], as the Open level does
everywhere the gate is closed. With nothing to clamp
it returns the layer's output object untouched, so the model is bit-identical to the
unhooked one. Targets come from a callback read at every pass, so a slider move takes
effect on the next token.

Attention-sink positions (the first token of many models carries a residual norm a
hundred times the others) are neither recorded nor clamped: the SAE was not trained on
them, so its reading there is meaningless and (c - a) could be huge.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from steerchat.engine.core.featureset import HarmGate
from steerchat.engine.runtime.layers import decoder_layer, layer_hidden, with_hidden
from steerchat.engine.runtime.sae import SAE

# A position whose residual norm exceeds this many times the prompt's median is an attention sink.
SINK_FACTOR = 20.0


@dataclass
class ClampRequest:
    """What to clamp on this pass: target activations for the hook's refusal features."""

    targets: torch.Tensor | None  # (R,) or None for no clamp
    conditional: bool = False  # clamp only where the gate is open
    # the "Open" direction, for models that over-refuse: clamp only where the gate is closed
    # (the prompt looks benign), and only downwards: x' = x + sum_f min(c_f - a_f, 0) W_dec[f]
    lower_where_closed: bool = False
    # two-sided conditional clamp: where the gate stays closed, clamp down (only) to these instead
    # of leaving the row alone: x' = x + sum_f min(c'_f - a_f, 0) W_dec[f]
    closed_targets: torch.Tensor | None = None


@dataclass
class FeatureGate:
    """Conditional steering: is this prompt harmful enough to steer?

    method "features": score = max over prompt positions of sum_f w_f * a_f(x), read at
    prefill on the SAE's own (unclamped) activations.
    method "probe": a linear probe on the hook-layer residual h_t itself:
    score = bias + mean over user tokens of u·h_t + mean over the template tokens after the
    user message (where an instruction model settles whether to refuse) of v·h_t, so each
    position's share of the score is u·h_t / n_user or v·h_t / n_template.
    The gate opens where score >= threshold. The lowering side (Open, two-sided levels) reads a
    second, lower threshold: it pushes refusal down only where score < benign_threshold (when
    set; otherwise wherever the gate is closed), so a prompt scored in between is left alone.
    """

    features: list[int]
    weights: list[float]
    threshold: float
    skip_positions: int = 0  # leading template tokens that carry no prompt content
    method: str = "features"
    probe_user: list[float] = field(default_factory=list)
    probe_template: list[float] = field(default_factory=list)
    bias: float = 0.0
    benign_threshold: float | None = None

    def __post_init__(self) -> None:
        self.last_signals: list[dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_spec(cls, gate: HarmGate) -> "FeatureGate":
        """The runtime gate for a fitted `HarmGate` read from features.json."""
        return cls(list(gate.features), list(gate.weights), gate.threshold, gate.skip_positions,
                   gate.method, list(gate.probe_user), list(gate.probe_template), gate.bias, gate.benign_threshold)

    def is_open(self, scores: torch.Tensor) -> torch.Tensor:
        """Where conditional steering raises refusal: score >= threshold."""
        return scores >= self.threshold

    def is_benign(self, scores: torch.Tensor) -> torch.Tensor:
        """Where the lowering side may push refusal down: below the benign threshold (the gate's
        own threshold when none is set)."""
        return scores < (self.threshold if self.benign_threshold is None else self.benign_threshold)

    @property
    def is_probe(self) -> bool:
        return self.method == "probe"

    def scores(self, acts: torch.Tensor, mask: torch.Tensor | None,
               hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence scores (B,) and per-position scores (B, T): for a probe, each
        position's additive share of the score (-inf where a position does not count)."""
        if self.is_probe:
            return self._probe_scores(hidden if hidden is not None else acts, mask)
        w = torch.tensor(self.weights, dtype=acts.dtype, device=acts.device)
        per_pos = acts[..., self.features] @ w
        if self.skip_positions:
            per_pos[:, : self.skip_positions] = float("-inf")
        if mask is not None:
            per_pos = per_pos.masked_fill(~mask.bool(), float("-inf"))
        return per_pos.max(dim=-1).values, per_pos

    @staticmethod
    def template_mask(user: torch.Tensor) -> torch.Tensor:
        """Positions after each row's last user token (the chat template's closing and
        the assistant header, in a prefill that ends with the generation prompt)."""
        t = user.shape[-1]
        pos = torch.arange(t, device=user.device).expand_as(user)
        last = torch.where(user, pos, torch.full_like(pos, -1)).amax(dim=-1, keepdim=True)
        return (pos > last) & (last >= 0)

    def _probe_scores(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = hidden.float()
        b, t = h.shape[:2]
        user = mask.bool().to(h.device) if mask is not None else torch.ones(b, t, dtype=torch.bool, device=h.device)
        if self.skip_positions:
            user = user.clone()
            user[:, : self.skip_positions] = False
        u = torch.tensor(self.probe_user, dtype=h.dtype, device=h.device)
        per_pos = torch.zeros(b, t, dtype=h.dtype, device=h.device)
        n_user = user.sum(-1, keepdim=True).clamp_min(1)
        user_part = (h @ u) * user / n_user
        per_pos = per_pos + user_part
        counted = user
        signals = {"user": user_part.sum(-1)}
        if self.probe_template:
            tmpl = self.template_mask(user)
            v = torch.tensor(self.probe_template, dtype=h.dtype, device=h.device)
            tmpl_part = (h @ v) * tmpl / tmpl.sum(-1, keepdim=True).clamp_min(1)
            per_pos = per_pos + tmpl_part
            counted = counted | tmpl
            signals["template"] = tmpl_part.sum(-1)
        score = per_pos.sum(-1) + self.bias
        self.last_signals = [{k: float(v[i]) for k, v in signals.items()} | {"bias": float(self.bias)}
                             for i in range(b)]
        return score, per_pos.masked_fill(~counted, float("-inf"))


@dataclass
class PassRecord:
    """What the hook saw on one forward pass (tensors kept on the model's device until the end)."""

    top_idx: torch.Tensor  # (B, T, N)
    top_val: torch.Tensor  # (B, T, N)
    refusal_natural: torch.Tensor  # (B, T, R): refusal features before any clamp
    targets: torch.Tensor | None  # (R,) clamp targets used on this pass, None when not clamping
    stats_max: torch.Tensor  # (B, d_sae) max activation over the pass's positions
    stats_sum: torch.Tensor  # (B, d_sae)
    stats_count: torch.Tensor  # (B, d_sae)
    closed_targets: torch.Tensor | None = None  # (R,) a two-sided clamp's lowering targets for closed-gate rows


@dataclass
class SteeringHook:
    """Records SAE features at a decoder layer and clamps refusal features on request.

    `control()` is called on every pass and returns a ClampRequest; `gate` (optional)
    decides at prefill whether conditional clamps apply to each sequence. `applied()` is
    the one way to configure and attach it for a generation or a forward pass.
    """

    sae: SAE
    layer: int
    refusal_features: list[int] = field(default_factory=list)
    control: Callable[[], ClampRequest] | None = None
    gate: FeatureGate | None = None
    top_n: int = 8
    record: bool = True
    prompt_mask: torch.Tensor | None = None  # (B, T) attention mask of the prompt, for the gate
    sink_factor: float = SINK_FACTOR

    def __post_init__(self) -> None:
        self.records: list[PassRecord] = []
        self.gate_scores: torch.Tensor | None = None
        self.gate_positions: torch.Tensor | None = None
        self.gate_open: torch.Tensor | None = None
        self.gate_benign: torch.Tensor | None = None
        self.steered_rows: torch.Tensor | None = None
        self._dirs: torch.Tensor | None = None
        self._handle = None
        self._ref_norm: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget what was recorded: call before each new generation."""
        self.records = []
        self.gate_scores = self.gate_positions = self.gate_open = self.gate_benign = None
        self.steered_rows = None  # (B,) rows the last pass clamped, None when it clamped none
        self._ref_norm = None

    @property
    def directions(self) -> torch.Tensor:
        if self._dirs is None:
            self._dirs = self.sae.decoder_directions(self.refusal_features)
        return self._dirs

    def _hook(self, module: torch.nn.Module, args: tuple, output):
        hidden = layer_hidden(output)
        with torch.no_grad():
            norms = hidden.float().norm(dim=-1)  # (B, T)
            if self._ref_norm is None:
                self._ref_norm = norms.median()
            live = norms <= self.sink_factor * self._ref_norm
            acts = self.sae.encode(hidden) * live[..., None]
            natural = acts[..., self.refusal_features]
            if self.gate is not None and self.gate_scores is None:
                self.gate_scores, self.gate_positions = self.gate.scores(acts, self.prompt_mask, hidden)
                self.gate_open = self.gate.is_open(self.gate_scores)
                self.gate_benign = self.gate.is_benign(self.gate_scores)
            request = self.control() if self.control is not None else ClampRequest(None)
            targets = request.targets if self.refusal_features else None
            closed = request.closed_targets if (self.refusal_features and request.conditional) else None
            if request.conditional or request.lower_where_closed:
                # a gated clamp without a gate to read does nothing, in either direction
                if self.gate_open is None:
                    targets = closed = None
                else:
                    if request.conditional and not bool(self.gate_open.any()):
                        targets = None
                    if not bool(self.gate_benign.any()):
                        closed = None  # nothing benign enough to lower
                        if request.lower_where_closed:
                            targets = None
            if self.record:
                n = min(self.top_n, acts.shape[-1])
                top_val, top_idx = acts.topk(n, dim=-1)
                fired = acts > 0
                self.records.append(PassRecord(
                    top_idx=top_idx, top_val=top_val, refusal_natural=natural, targets=targets,
                    closed_targets=closed,
                    stats_max=acts.amax(dim=1), stats_sum=acts.sum(dim=1), stats_count=fired.sum(dim=1),
                ))
            if targets is None and closed is None:
                self.steered_rows = None
                return output
            live_r = live[..., None].to(natural.dtype)
            coeff = torch.zeros_like(natural)  # (B, T, R)
            self.steered_rows = None
            if targets is not None:
                coeff = (targets.to(natural.dtype) - natural) * live_r
                if request.lower_where_closed:
                    # never raised, and only where the gate says the prompt is benign; the decoding
                    # guards for steered refusals are not for rows pushed away from refusing
                    coeff = coeff.clamp(max=0) * self.gate_benign.to(coeff.dtype)[:, None, None]
                elif request.conditional:
                    coeff = coeff * self.gate_open.to(coeff.dtype)[:, None, None]
                    self.steered_rows = self.gate_open.clone()
                else:
                    self.steered_rows = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
            if closed is not None:
                lowered = ((closed.to(natural.dtype) - natural) * live_r).clamp(max=0)
                coeff = coeff + lowered * self.gate_benign.to(coeff.dtype)[:, None, None]
            delta = coeff @ self.directions.to(coeff.dtype)
            steered = hidden + delta.to(hidden.dtype)
        return with_hidden(output, steered)

    def attach(self, model: torch.nn.Module) -> "SteeringHook":
        self.detach()
        self._handle = decoder_layer(model, self.layer).register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextmanager
    def applied(self, model: torch.nn.Module, control: Callable[[], ClampRequest] | None = None,
                prompt_mask: torch.Tensor | None = None, record: bool = True) -> Iterator["SteeringHook"]:
        """Forget the last pass, take this run's control (None keeps the hook's own), prompt mask
        and recording choice, and attach for the duration of a block; removed on exit, error or
        cancel alike."""
        self.reset()
        if control is not None:
            self.control = control
        self.prompt_mask, self.record = prompt_mask, record
        self.attach(model)
        try:
            yield self
        finally:
            self.detach()
