"""Turning what the steering hook recorded into the plain-data parts of a TurnTrace."""

from __future__ import annotations

import torch
from steerchat.engine.core.featureset import FeatureSet
from steerchat.engine.core.trace import (
    FeatureStat,
    GateDecision,
    RefusalFeatureState,
    TokenFeatures,
    TurnTrace,
)
from steerchat.engine.runtime.steering import SteeringHook

TOP_FEATURES = 40  # features listed per span, by peak activation
GATE_TOKENS = 8


def _r(x: float) -> float:
    return round(float(x), 4)


def _span_stats(mx: torch.Tensor, sm: torch.Tensor, ct: torch.Tensor, features: FeatureSet) -> list[FeatureStat]:
    fired = (ct > 0).nonzero().flatten()
    if fired.numel() == 0:
        return []
    order = fired[mx[fired].argsort(descending=True)][:TOP_FEATURES]
    return [
        FeatureStat(
            feature=int(f), max=_r(mx[f]), mean=_r(sm[f] / ct[f]), count=int(ct[f]), label=features.label(int(f))
        )
        for f in order.tolist()
    ]


def build_trace_features(
    trace: TurnTrace, hook: SteeringHook, prompt_ids: list[int], reply_ids: list[int], tokenizer,
    features: FeatureSet, end_targets: torch.Tensor | None,
) -> None:
    """Fill the trace's tokens, feature stats, refusal-feature states and gate (batch row 0)."""
    records = hook.records
    prefill, steps = records[0], records[1:]
    all_ids = prompt_ids + reply_ids
    pieces = tokenizer.batch_decode([[i] for i in all_ids])

    # per-position top features: the prefill covers the prompt, each step one reply token
    top_idx = torch.cat([r.top_idx[0] for r in records]).cpu()
    top_val = torch.cat([r.top_val[0] for r in records]).cpu()
    n_prompt = len(prompt_ids)
    for pos in range(min(top_idx.shape[0], len(all_ids))):
        feats = [(int(f), _r(v)) for f, v in zip(top_idx[pos].tolist(), top_val[pos].tolist()) if v > 0]
        trace.tokens.append(
            TokenFeatures(index=pos, token=pieces[pos], span="prompt" if pos < n_prompt else "reply", features=feats)
        )

    trace.prompt_features = _span_stats(
        prefill.stats_max[0].cpu(), prefill.stats_sum[0].cpu(), prefill.stats_count[0].cpu(), features
    )
    if steps:
        mx = torch.stack([r.stats_max[0] for r in steps]).amax(0).cpu()
        sm = torch.stack([r.stats_sum[0] for r in steps]).sum(0).cpu()
        ct = torch.stack([r.stats_count[0] for r in steps]).sum(0).cpu()
        trace.reply_features = _span_stats(mx, sm, ct, features)

    if hook.refusal_features:
        nat_prompt = prefill.refusal_natural[0].amax(0).cpu()
        if steps:
            nat_reply = torch.cat([r.refusal_natural[0] for r in steps]).cpu()
            reply_max, reply_mean = nat_reply.amax(0), nat_reply.mean(0)
        else:
            reply_max = reply_mean = torch.zeros_like(nat_prompt)
        last = records[-1]
        clamped = last.targets is not None or last.closed_targets is not None
        for i, rf in enumerate(features.refusal_features):
            target = end_targets[i] if (clamped and end_targets is not None) else None
            trace.refusal_features.append(RefusalFeatureState(
                feature=rf.feature, reference_activation=_r(rf.reference_activation),
                natural_prompt_max=_r(nat_prompt[i]), natural_reply_max=_r(reply_max[i]),
                natural_reply_mean=_r(reply_mean[i]), target=None if target is None else _r(target),
                label=rf.label or features.label(rf.feature),
            ))

    if hook.gate is not None and hook.gate_scores is not None:
        per_pos = hook.gate_positions[0].cpu()
        finite = torch.isfinite(per_pos)
        order = per_pos.masked_fill(~finite, float("-inf")).argsort(descending=True)
        top = [(pieces[int(p)], _r(per_pos[p])) for p in order[:GATE_TOKENS].tolist() if finite[p] and per_pos[p] > 0]
        low = per_pos.masked_fill(~finite, float("inf")).argsort()
        bottom = [(pieces[int(p)], _r(per_pos[p])) for p in low[:GATE_TOKENS].tolist() if finite[p] and per_pos[p] < 0]
        signals: list[tuple[str, float]] = []
        last = getattr(hook.gate, "last_signals", None)
        if getattr(hook.gate, "is_probe", False) and last:
            names = {"user": "user tokens (mean of u·h)", "template": "template tokens after the message (mean of v·h)",
                     "bias": "bias"}
            signals = [(names.get(k, k), _r(v)) for k, v in last[0].items()]
        trace.gate = GateDecision(
            score=_r(hook.gate_scores[0]), threshold=_r(hook.gate.threshold), open=bool(hook.gate_open[0]),
            method=features.harm_gate.method if features.harm_gate else "features", top_tokens=top,
            bottom_tokens=bottom if getattr(hook.gate, "is_probe", False) else [], signals=signals,
            benign_threshold=None if hook.gate.benign_threshold is None else _r(hook.gate.benign_threshold),
            benign=None if hook.gate.benign_threshold is None else bool(hook.gate_benign[0]),
        )
