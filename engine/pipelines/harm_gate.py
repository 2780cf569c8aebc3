"""Fitting the harm gate for conditional steering.

Two methods. The default, ``probe`` (chosen by measurement on the dev split, see
models/smollm2-135m/EVAL.md): class-balanced logistic regression on the hook-layer
residual, mean-pooled over the user message's tokens and over the template tokens after
it, with dangerous-sounding benign prompts weighted as heavily as all ordinary ones
(`fit_probe`; the runtime gate is `FeatureGate` with method "probe"). The older
``features`` method, kept for comparison and for models where it measures better:

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

Both methods also pick a second, lower threshold on the same dev harmful prompts, for the
lowering side (the Open and two-sided levels): the highest score that `benign_recall` (99%) of
them reach. Refusal is pushed down only below it, so a harmful prompt the gate misses is left as
the model has it rather than pushed towards an answer (`fit_benign_threshold` sets it alone,
keeping a fitted gate).

The hard negatives and subtle harmful prompts in `engine/gate_data/` are dev data written
for this, separate from the evaluation sets in `engine/data/`.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from steerchat.engine.core.datasets import load_prompts
from steerchat.engine.core.featureset import HarmGate
from steerchat.engine.core.levels import GuidanceMode, SafetyLevel, SafetySettings
from steerchat.engine.core.jsonl import read_jsonl
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
    # an explicit dev split (threshold and metrics); when empty, `dev_fraction` of each list is held out
    dev_harmful: list[str] = field(default_factory=list)
    dev_hard: list[str] = field(default_factory=list)
    dev_harmless: list[str] = field(default_factory=list)


def _read_prompts(path: Path) -> list[str]:
    return [p.text for p in load_prompts(path)]


def read_split(path: Path, split: str) -> list[str]:
    """The prompts of a gate_data JSONL file whose ``split`` field is `split` (no field: fit)."""
    return [row["prompt"] for row in read_jsonl(path, required=("prompt",)) if row.get("split", "fit") == split]


def split_shared(prompts: list[str], tag: str, first: str, second: str, fraction: float = 0.5) -> dict[str, list[str]]:
    """A deterministic two-way split of a shared set (seeded by its name, so it never moves):
    benign_edgy → dev/heldout, harmful_dna → fit/dev."""
    rng = random.Random(tag)
    out: dict[str, list[str]] = {first: [], second: []}
    if tag == "edgy":  # half by a shuffled order
        order = list(range(len(prompts)))
        rng.shuffle(order)
        cut = set(order[: len(prompts) // 2])
        for i, p in enumerate(prompts):
            out[first if i in cut else second].append(p)
        return out
    for p in prompts:
        out[first if rng.random() < fraction else second].append(p)
    return out


def default_gate_data(shared: Path | None = None, n_harmless: int = 400, seed: int = 0) -> GateData:
    """Fit: the shared harmful_train and half of harmful_dna (if present), our mild harmful
    and subtle harmful lists (fit split); a seeded sample of shared harmless_train; our
    hard negatives and dangerous-sounding benign prompts (fit split).
    Dev (threshold): the other half of harmful_dna, the dev splits of our lists and half of
    shared benign_edgy. The ``heldout`` splits and the other half of benign_edgy choose
    nothing; harmful_val and harmless_val are left out: they are where steering is measured."""
    harmful = _read_prompts(GATE_DATA / "subtle_harmful.jsonl") + read_split(GATE_DATA / "mild_harmful.jsonl", "fit")
    hard = _read_prompts(GATE_DATA / "hard_negatives.jsonl") + read_split(GATE_DATA / "benign_scary.jsonl", "fit")
    dev_harmful = read_split(GATE_DATA / "mild_harmful.jsonl", "dev")
    dev_hard = read_split(GATE_DATA / "benign_scary.jsonl", "dev")
    harmless: list[str] = []
    if shared is not None and shared.is_dir():
        if (shared / "harmful_train.json").is_file():
            harmful += _read_prompts(shared / "harmful_train.json")
        if (shared / "harmful_dna.json").is_file():
            dna = split_shared(_read_prompts(shared / "harmful_dna.json"), "dna", "fit", "dev")
            harmful += dna["fit"]
            dev_harmful += dna["dev"]
        if (shared / "benign_edgy.json").is_file():
            dev_hard += split_shared(_read_prompts(shared / "benign_edgy.json"), "edgy", "dev", "heldout")["dev"]
        if (shared / "harmless_train.json").is_file():
            pool = _read_prompts(shared / "harmless_train.json")
            harmless = random.Random(seed).sample(pool, min(n_harmless, len(pool)))
    return GateData(harmful, harmless, hard, dev_harmful=dev_harmful, dev_hard=dev_hard)


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


def _pooled_hidden(steered: SteeredModel, prompts: list[str], guidance: GuidanceMode, batch_size: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """What the probe gate reads: the hook-layer residual of each prompt, mean-pooled over
    the user message's tokens and over the template tokens after it: two (N, d) tensors."""
    from steerchat.engine.runtime.steering import FeatureGate

    tok, model = steered.loaded.tokenizer, steered.loaded.model
    layer = steered.hook.layer if steered.hook is not None else steered.sae.cfg.hook_layer
    settings = SafetySettings(level=SafetyLevel("fit", guidance))
    users, tmpls = [], []
    for start in range(0, len(prompts), batch_size):
        preps = [steered.prepare([], p, settings) for p in prompts[start : start + batch_size]]
        batch = pad_batch([p.input_ids[0] for p in preps], pad_id(tok), "right", steered.loaded.device)
        hidden = run_to_layer(model, layer, batch.input_ids, batch.attention_mask).float()
        for row, p in enumerate(preps):
            n = p.input_ids.shape[1]
            um = p.user_mask[0].to(hidden.device)
            tm = FeatureGate.template_mask(um[None])[0]
            h = hidden[row, :n]
            users.append(h[um].mean(0).cpu())
            tmpls.append(h[tm].mean(0).cpu() if bool(tm.any()) else torch.zeros(h.shape[-1]))
    d = steered.loaded.d_model if not users else users[0].shape[0]
    empty = torch.zeros(0, d)
    return (torch.stack(users) if users else empty), (torch.stack(tmpls) if tmpls else empty)


def fit_probe(x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor, l2: float = 1e-2
              ) -> tuple[torch.Tensor, float]:
    """Logistic regression on standardised columns (L2 `l2` on the standardised weights),
    by L-BFGS; returns weights and bias on the raw scale, so score = x @ w + b."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-4)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    sw = sample_weight / sample_weight.mean()
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=sw) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / sd).detach()
    return w_raw, float((b - (mu / sd) @ w).detach())


def class_weights(groups: list[str], hard_weight: float = 1.0) -> torch.Tensor:
    """Per-example weights: harmful prompts, ordinary harmless ones and hard negatives each
    weigh 1 in total (hard negatives `hard_weight`), so harmful = half of all negatives."""
    counts = {g: groups.count(g) for g in set(groups)}
    total = {"harmful": 1.0, "harmless": 1.0, "hard": hard_weight}
    return torch.tensor([total[g] / counts[g] for g in groups])


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


def benign_below(pos: torch.Tensor, threshold: float, benign_recall: float) -> float:
    """The lowering side's threshold: the highest score that `benign_recall` of the harmful
    scores `pos` reach, never above the gate's own `threshold` (stored precision, rounded down)."""
    return min(threshold, math.floor(pick_threshold(pos, benign_recall) * 1e6) / 1e6)


def _benign_metrics(scores: dict[str, torch.Tensor], benign_threshold: float, benign_recall: float) -> dict:
    """Shares of each dev group scored below the benign threshold (where refusal may be lowered)."""
    def below(v):
        return round(float((v < benign_threshold).float().mean()), 4) if len(v) else None

    return {"benign_recall": benign_recall, "dev_benign_harmful": below(scores.get("harmful", torch.zeros(0))),
            "dev_benign_harmless": below(scores.get("harmless", torch.zeros(0))),
            "dev_benign_hard_negative": below(scores.get("hard", torch.zeros(0)))}


def _split(items: list[str], dev_fraction: float, seed: int, tag: str) -> tuple[list[str], list[str]]:
    order = list(range(len(items)))
    random.Random(f"{seed}:{tag}").shuffle(order)
    n_dev = int(round(len(items) * dev_fraction))
    return [items[i] for i in order[n_dev:]], [items[i] for i in order[:n_dev]]


def _splits(data: GateData, dev_fraction: float, seed: int) -> dict[str, tuple[list[str], list[str]]]:
    groups = {"harmful": data.harmful, "harmless": data.harmless, "hard": data.hard}
    if data.dev_harmful:  # an explicit dev split: fit on everything else
        dev = {"harmful": data.dev_harmful, "harmless": data.dev_harmless, "hard": data.dev_hard}
        return {g: (list(v), list(dev[g])) for g, v in groups.items()}
    return {g: _split(v, dev_fraction, seed, g) for g, v in groups.items()}


def fit_probe_gate(steered: SteeredModel, data: GateData, recall_target: float = 0.9, dev_fraction: float = 0.3,
                   guidance: tuple[str, ...] = ("none", "hint"), batch_size: int = 16, seed: int = 0,
                   progress=None, l2: float = 1e-2, pooled: dict | None = None,
                   benign_recall: float = 0.99) -> HarmGate:
    """The probe gate (see the module docstring). `pooled`, when given, maps each prompt to
    its (user mean, template mean) residuals already computed under the single guidance
    mode in `guidance` (so a measurement run's encodings can be reused)."""
    split = _splits(data, dev_fraction, seed)

    def encode(prompts: list[str]) -> torch.Tensor:
        parts = []
        for g in guidance:
            if pooled is not None:
                xu = torch.stack([pooled[p][0] for p in prompts]) if prompts else torch.zeros(0, 0)
                xt = torch.stack([pooled[p][1] for p in prompts]) if prompts else torch.zeros(0, 0)
            else:
                xu, xt = _pooled_hidden(steered, prompts, GuidanceMode(g), batch_size)
            parts.append(torch.cat([xu, xt], 1) if len(prompts) else torch.zeros(0, 0))
            if progress:
                progress(len(prompts))
        return torch.cat(parts) if len(prompts) else torch.zeros(0, 0)

    train = {g: encode(split[g][0]) for g in split}
    dev = {g: encode(split[g][1]) for g in split}
    names = [g for g in train for _ in range(len(train[g]))]
    x = torch.cat([train[g] for g in train if len(train[g])])
    y = torch.tensor([float(g == "harmful") for g in names])
    w, bias = fit_probe(x, y, class_weights(names), l2=l2)
    d = x.shape[1] // 2

    def score(m: torch.Tensor) -> torch.Tensor:
        return m @ w + bias if len(m) else torch.zeros(0)

    dev_s = {g: score(v) for g, v in dev.items()}
    train_s = {g: score(v) for g, v in train.items()}
    pos = dev_s["harmful"] if len(dev_s["harmful"]) else train_s["harmful"]
    threshold = math.floor(pick_threshold(pos, recall_target) * 1e6) / 1e6

    def rate(v):
        return round(float((v >= threshold).float().mean()), 4) if len(v) else None

    metrics = {
        "dev_open_harmful": rate(dev_s["harmful"]), "dev_open_harmless": rate(dev_s["harmless"]),
        "dev_open_hard_negative": rate(dev_s["hard"]), "train_open_harmful": rate(train_s["harmful"]),
        "train_open_harmless": rate(train_s["harmless"]), "train_open_hard_negative": rate(train_s["hard"]),
        "recall_target": recall_target, "guidance_modes": list(guidance), "l2": l2,
        "n_train": {g: len(split[g][0]) for g in split}, "n_dev": {g: len(split[g][1]) for g in split},
    }
    benign = benign_below(pos, threshold, benign_recall)
    metrics |= _benign_metrics(dev_s, benign, benign_recall)
    return HarmGate(features=[], weights=[], threshold=threshold, method="probe", metrics=metrics,
                    probe_user=[round(float(v), 7) for v in w[:d]], probe_template=[round(float(v), 7) for v in w[d:]],
                    bias=round(bias, 7), benign_threshold=benign)


def fit_harm_gate(steered: SteeredModel, data: GateData, top_k: int = 16, recall_target: float = 0.9,
                  dev_fraction: float = 0.3, guidance: tuple[str, ...] = ("none", "hint"),
                  batch_size: int = 16, seed: int = 0, progress=None, method: str = "probe",
                  l2: float = 1e-2, benign_recall: float = 0.99) -> HarmGate:
    """Fit the harm gate on `data` with the steered model (and, for method "features", its
    SAE); metrics on the dev split are stored in the gate. Prompts are encoded under each
    guidance mode the levels use, because the system prompt changes the activations on the
    user tokens. `top_k` applies to the features method only."""
    if method not in ("probe", "features"):
        raise ValueError(f"unknown gate method {method!r} (probe or features)")
    if steered.sae is None:
        raise ValueError("fitting a harm gate needs an SAE")
    if not data.harmful or not (data.harmless or data.hard):
        raise ValueError("fitting a harm gate needs harmful prompts and harmless or hard-negative prompts")
    if method == "probe":
        return fit_probe_gate(steered, data, recall_target, dev_fraction, guidance, batch_size, seed, progress, l2,
                              benign_recall=benign_recall)
    groups = {"harmful": data.harmful, "harmless": data.harmless, "hard": data.hard}
    split = _splits(data, dev_fraction, seed)

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
    benign = benign_below(pos, threshold, benign_recall)
    metrics |= _benign_metrics(dev, benign, benign_recall)
    return HarmGate(features=features, weights=[round(float(w), 6) for w in weights],
                    threshold=threshold, method="features", metrics=metrics, benign_threshold=benign)


def gate_decisions(steered: SteeredModel, prompts: list[str], settings: SafetySettings, batch_size: int = 16
                   ) -> list[tuple[float, bool, bool]]:
    """The runtime gate's (score, open, benign) for each prompt, exactly as `generate_batch`
    would decide them (same rendering, left padding and hook), from a prefill stopped at the
    hook layer. Benign: below the lowering side's threshold (see FeatureGate.is_benign)."""
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
        out += [(float(s), bool(o), bool(b)) for s, o, b in zip(hook.gate_scores, hook.gate_open, hook.gate_benign)]
    return out


def fit_benign_threshold(steered: SteeredModel, data: GateData, benign_recall: float = 0.99,
                         guidance: tuple[str, ...] = ("none", "hint"), dev_fraction: float = 0.3, seed: int = 0,
                         batch_size: int = 16, progress=None) -> HarmGate:
    """The model's fitted gate with only its benign threshold (re)chosen: the dev prompts are
    scored by the runtime gate under each guidance mode, as the fit scores them, and the gate's
    probe or features and its threshold are kept as they are."""
    if steered.gate is None or steered.features.harm_gate is None:
        raise ValueError("this model has no harm gate to add a benign threshold to; fit one with --fit-gate")
    split = _splits(data, dev_fraction, seed)
    scores: dict[str, torch.Tensor] = {}
    for g, (_, dev) in split.items():
        got: list[float] = []
        for mode in guidance:
            got += [s for s, *_ in gate_decisions(steered, dev, SafetySettings(level=SafetyLevel("fit", GuidanceMode(mode))),
                                                  batch_size)]
            if progress:
                progress(len(dev))
        scores[g] = torch.tensor(got)
    if not len(scores["harmful"]):
        raise ValueError("the gate data has no dev harmful prompts to choose a benign threshold on")
    gate = steered.features.harm_gate
    benign = benign_below(scores["harmful"], gate.threshold, benign_recall)
    return replace(gate, benign_threshold=benign, metrics=gate.metrics | _benign_metrics(scores, benign, benign_recall))


def write_gate(features_path: Path, gate: HarmGate, command: str = "") -> None:
    """Put `gate` into an existing features.json, leaving everything else in it as it was."""
    features_path = Path(features_path)
    data = json.loads(features_path.read_text())
    data["harm_gate"] = {"features": gate.features, "weights": gate.weights, "threshold": gate.threshold,
                         "method": gate.method, "skip_positions": gate.skip_positions,
                         "metrics": gate.metrics | ({"command": command} if command else {})}
    if gate.benign_threshold is not None:
        data["harm_gate"]["benign_threshold"] = gate.benign_threshold
    if gate.method == "probe":
        data["harm_gate"] |= {"bias": gate.bias, "probe_user": gate.probe_user, "probe_template": gate.probe_template}
    features_path.write_text(json.dumps(data, indent=2) + "\n")
