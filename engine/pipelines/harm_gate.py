"""Fitting the harm gate for conditional steering, from SAE features on the prompt.

The gate (`engine.runtime.steering.FeatureGate`) scores a prompt at prefill as the max over the
user-message tokens of Σ_f w_f · a_f and opens at a threshold. It is found the way the
refusal features are, by contrast:

1. encode the hook-layer residual of each prompt's user tokens with the SAE and keep each
   feature's max over those tokens;
2. rank features by effect size (Cohen's d) of harmful against harmless prompts, taking
   for each feature the *smaller* of its d against ordinary instructions and against hard
   negatives (requests that merely sound dangerous), so a feature that fires on "kill a
   Python process" ranks low however well it separates Alpaca from AdvBench;
3. fit non-negative weights for the top features by class-balanced logistic regression;
4. score every prompt as the gate will (per-token weighted sum, max over tokens) and pick
   the threshold on a held-out dev split: the highest one that still opens on
   `recall_target` of the dev harmful prompts.

The hard negatives and subtle harmful prompts in `engine/gate_data/` are dev data written
for this, separate from the evaluation sets in `engine/data/`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from steerchat.engine.core.datasets import load_prompts
from steerchat.engine.core.featureset import HarmGate
from steerchat.engine.core.levels import GuidanceMode, SafetyLevel, SafetySettings
from steerchat.engine.runtime.batch import pad_batch, pad_id
from steerchat.engine.runtime.layers import run_to_layer
from steerchat.engine.runtime.steered import SteeredModel
from steerchat.engine.runtime.steering import SINK_FACTOR, ClampRequest

GATE_DATA = Path(__file__).resolve().parent.parent / "gate_data"


@dataclass
class GateData:
    harmful: list[str]
    harmless: list[str]
    hard: list[str]  # harmless prompts that sound dangerous


def _read_prompts(path: Path) -> list[str]:
    return [p.text for p in load_prompts(path)]


def default_gate_data(shared: Path | None = None, n_harmless: int = 300, seed: int = 0) -> GateData:
    """Harmful: the shared harmful_train set (if present) plus our subtle harmful list;
    harmless: a seeded sample of shared harmless_train; hard: our hard-negative list.
    harmful_val and harmless_val are left out: they are where steering is measured."""
    harmful = _read_prompts(GATE_DATA / "subtle_harmful.jsonl")
    harmless: list[str] = []
    if shared is not None and shared.is_dir():
        if (shared / "harmful_train.json").is_file():
            harmful += _read_prompts(shared / "harmful_train.json")
        if (shared / "harmless_train.json").is_file():
            pool = _read_prompts(shared / "harmless_train.json")
            harmless = random.Random(seed).sample(pool, min(n_harmless, len(pool)))
    return GateData(harmful, harmless, _read_prompts(GATE_DATA / "hard_negatives.jsonl"))


def _user_acts(steered: SteeredModel, prompts: list[str], guidance: GuidanceMode, batch_size: int,
               features: list[int] | None = None) -> list[torch.Tensor]:
    """SAE activations on each prompt's user tokens: a (T_user, d_sae or len(features)) tensor each."""
    tok, model, sae = steered.loaded.tokenizer, steered.loaded.model, steered.sae
    settings = SafetySettings(level=SafetyLevel("fit", guidance))
    sink_factor = steered.hook.sink_factor if steered.hook is not None else SINK_FACTOR
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        preps = [steered.prepare([], p, settings) for p in prompts[start : start + batch_size]]
        # right padding: positions match the unpadded prompt
        batch = pad_batch([p.input_ids[0] for p in preps], pad_id(tok), "right", steered.loaded.device)
        hidden = run_to_layer(model, sae.cfg.hook_layer, batch.input_ids, batch.attention_mask)
        with torch.inference_mode():
            acts = sae.encode(hidden.to(sae.W_enc.dtype)).float()
        norms = hidden.float().norm(dim=-1)
        for row, p in enumerate(preps):
            n = p.input_ids.shape[1]
            # as the steering hook does: attention-sink positions carry no SAE reading
            live = norms[row, :n] <= sink_factor * norms[row, :n].median()
            a = (acts[row, :n] * live[:, None])[p.user_mask[0]]
            out.append((a if features is None else a[:, features]).cpu())
    return out


def effect_sizes(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Cohen's d per column of (N, F) matrices, with a floor on the pooled std so a
    feature that never fires on one side does not win on a tiny variance."""
    m1, m0 = pos.mean(0), neg.mean(0)
    v = ((pos.var(0, unbiased=False) * len(pos)) + (neg.var(0, unbiased=False) * len(neg))) / (len(pos) + len(neg))
    return (m1 - m0) / v.sqrt().clamp_min(1e-2 + 0.05 * (m1.abs() + m0.abs()))


def rank_gate_features(harmful: torch.Tensor, harmless: torch.Tensor, hard: torch.Tensor | None) -> torch.Tensor:
    """Per-feature score: the smaller effect size against harmless and against hard negatives."""
    d = effect_sizes(harmful, harmless) if len(harmless) else None
    if hard is not None and len(hard):
        dh = effect_sizes(harmful, hard)
        d = dh if d is None else torch.minimum(d, dh)
    return d


def fit_weights(x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor, steps: int = 400,
                l2: float = 1e-3) -> torch.Tensor:
    """Non-negative logistic-regression weights (features only add evidence of harm, so the
    per-token weighted sum the gate takes stays interpretable)."""
    torch.manual_seed(0)
    scale = x.amax(0).clamp_min(1e-6)
    raw = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([raw, bias], lr=0.05)
    xs = x / scale
    for _ in range(steps):
        w = torch.nn.functional.softplus(raw)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + bias, y, weight=sample_weight)
        loss = loss + l2 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (torch.nn.functional.softplus(raw) / scale).detach()


def gate_scores(acts: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """What the FeatureGate computes: max over user tokens of the weighted feature sum."""
    return torch.tensor([float((a @ weights).max()) if len(a) else float("-inf") for a in acts])


def pick_threshold(pos: torch.Tensor, recall_target: float) -> float:
    """The highest threshold that still opens on `recall_target` of `pos` (a score exactly at
    the threshold opens the gate)."""
    ranked = pos.sort(descending=True).values
    k = max(1, min(len(ranked), math.ceil(recall_target * len(ranked) - 1e-9)))
    return float(ranked[k - 1])


def _split(items: list[str], dev_fraction: float, seed: int, tag: str) -> tuple[list[str], list[str]]:
    order = list(range(len(items)))
    random.Random(f"{seed}:{tag}").shuffle(order)
    n_dev = int(round(len(items) * dev_fraction))
    return [items[i] for i in order[n_dev:]], [items[i] for i in order[:n_dev]]


def fit_harm_gate(steered: SteeredModel, data: GateData, top_k: int = 16, recall_target: float = 0.9,
                  dev_fraction: float = 0.3, guidance: tuple[str, ...] = ("none", "hint"),
                  batch_size: int = 16, seed: int = 0, progress=None) -> HarmGate:
    """Fit the harm gate on `data` with the steered model and its SAE; metrics on the dev split
    are stored in the gate. Prompts are encoded under each guidance mode the levels use,
    because the system prompt changes the activations on the user tokens."""
    if steered.sae is None:
        raise ValueError("fitting a harm gate needs an SAE")
    if not data.harmful or not (data.harmless or data.hard):
        raise ValueError("fitting a harm gate needs harmful prompts and harmless or hard-negative prompts")
    groups = {"harmful": data.harmful, "harmless": data.harmless, "hard": data.hard}
    split = {g: _split(v, dev_fraction, seed, g) for g, v in groups.items()}

    def encode(prompts: list[str], features=None) -> list[torch.Tensor]:
        acts: list[torch.Tensor] = []
        for g in guidance:
            acts += _user_acts(steered, prompts, GuidanceMode(g), batch_size, features)
            if progress:
                progress(len(prompts))
        return acts

    train = {g: encode(split[g][0]) for g in groups}
    pooled = {g: (torch.stack([a.amax(0) for a in v]) if v else torch.zeros(0, steered.sae.d_sae)) for g, v in train.items()}
    d = rank_gate_features(pooled["harmful"], pooled["harmless"], pooled["hard"])
    top = [int(f) for f in d.topk(min(top_k, len(d))).indices if d[f] > 0]
    if not top:
        raise ValueError("no SAE feature fires more on harmful prompts than on harmless ones")

    x = torch.cat([pooled[g][:, top] for g in groups])
    y = torch.cat([torch.full((len(pooled[g]),), float(g == "harmful")) for g in groups])
    # class balance, with hard negatives weighted as heavily as all ordinary ones together
    sw = torch.cat([torch.full((len(pooled[g]),), 1.0 / max(1, len(pooled[g]))) * (2.0 if g == "harmful" else 1.0)
                    for g in groups])
    weights = fit_weights(x, y, sw * len(y) / sw.sum())
    keep = [i for i, w in enumerate(weights.tolist()) if w > 1e-4 * float(weights.max())]
    features, weights = [top[i] for i in keep], weights[keep]

    dev = {g: gate_scores(encode(split[g][1], features), weights) for g in groups}
    train_scores = {g: gate_scores([a[:, features] for a in train[g]], weights) for g in groups}
    pos = dev["harmful"] if len(dev["harmful"]) else train_scores["harmful"]
    # rounded down to the stored precision, so the prompt that set it still opens the gate
    threshold = math.floor(pick_threshold(pos, recall_target) * 1e6) / 1e6

    def rate(s):
        return round(float((s >= threshold).float().mean()), 4) if len(s) else None

    metrics = {
        "dev_open_harmful": rate(dev["harmful"]), "dev_open_harmless": rate(dev["harmless"]),
        "dev_open_hard_negative": rate(dev["hard"]), "train_open_harmful": rate(train_scores["harmful"]),
        "train_open_harmless": rate(train_scores["harmless"]), "train_open_hard_negative": rate(train_scores["hard"]),
        "recall_target": recall_target, "guidance_modes": list(guidance),
        "n_train": {g: len(split[g][0]) for g in groups}, "n_dev": {g: len(split[g][1]) for g in groups},
        "effect_sizes": {str(f): round(float(d[f]), 3) for f in features},
    }
    return HarmGate(features=features, weights=[round(float(w), 6) for w in weights],
                    threshold=threshold, method="features", metrics=metrics)


def gate_decisions(steered: SteeredModel, prompts: list[str], settings: SafetySettings, batch_size: int = 16
                   ) -> list[tuple[float, bool]]:
    """The runtime gate's (score, open) for each prompt, exactly as `generate_batch` would
    decide it (same rendering, left padding and hook), from a prefill stopped at the hook layer."""
    hook, model, tok = steered.hook, steered.loaded.model, steered.loaded.tokenizer
    if hook is None or hook.gate is None:
        raise ValueError("this model has no harm gate")
    out: list[tuple[float, bool]] = []
    for start in range(0, len(prompts), batch_size):
        preps = [steered.prepare([], p, settings) for p in prompts[start : start + batch_size]]
        batch = pad_batch([p.input_ids[0] for p in preps], pad_id(tok), "left", steered.loaded.device,
                          masks=[[p.user_mask[0] for p in preps]])
        with steered.steering(lambda: ClampRequest(None), batch.masks[0], record=False):
            run_to_layer(model, hook.layer, batch.input_ids, batch.attention_mask)
        out += [(float(s), bool(o)) for s, o in zip(hook.gate_scores, hook.gate_open)]
    return out


def write_gate(features_path: Path, gate: HarmGate, command: str = "") -> None:
    """Put `gate` into an existing features.json, leaving everything else in it as it was."""
    features_path = Path(features_path)
    data = json.loads(features_path.read_text())
    data["harm_gate"] = {"features": gate.features, "weights": gate.weights, "threshold": gate.threshold,
                         "method": gate.method, "skip_positions": gate.skip_positions,
                         "metrics": gate.metrics | ({"command": command} if command else {})}
    features_path.write_text(json.dumps(data, indent=2) + "\n")
