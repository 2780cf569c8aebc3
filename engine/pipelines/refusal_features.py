"""Finding the SAE features that mean "refusal", and validating them by steering.

Two methods; both start from harmful prompts with a teacher-forced refusal reply and the
model's own compliant reply.

`direction` (the default). The refusal direction r is the difference of the mean hook-layer
residuals over refusal-reply tokens and compliant-reply tokens (a direction that, added
to the residual, makes the model refuse). A non-negative greedy pursuit over the SAE's
decoder rows finds the k features whose weighted sum best reproduces r, restricted to
features that fire more on refusals than on compliance. Each feature's reference
activation m_f is its coefficient in that sum, so at s = 1 the clamp adds the SAE's
k-sparse picture of the refusal direction at its measured size, and s means the same on
any model. Sets of several sizes are fitted and each is validated by clamping it on
held-out prompts; the best trade of harmful refusal against harmless refusal wins.
Refusal in a small model is spread over many features (on the starter, no single decoder
row is within cos 0.4 of r), which is why the set is fitted jointly.

`contrast`. Per feature, per sequence, the mean activation over the reply (or prompt)
tokens; score = Cohen's d of refusal sequences against compliant replies and harmless
prompts (effect size) times the difference in the fraction of sequences where it fires
(consistency) times the fraction of refusal-reply tokens it fires on. m_f is a high
percentile of its non-zero activations on refusal-reply tokens. The top candidates are
clamped alone at a probe strength on held-out prompts and the winners combined greedily
while the combination raises the harmful refusal rate.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from steerchat.engine.core.config import FindConfig
from steerchat.engine.core.featureset import FeatureSet, RefusalFeature
from steerchat.engine.core.jsonl import read_jsonl
from steerchat.engine.core.levels import GuidanceMode, SafetyLevel, SafetySettings
from steerchat.engine.core.refusal_replies import REFUSAL_TEMPLATES
from steerchat.engine.runtime.batch import generate_batch
from steerchat.engine.runtime.layers import run_to_layer
from steerchat.engine.runtime.steered import SteeredModel
from tqdm.auto import tqdm

METHODS = ("direction", "contrast")


@dataclass
class Candidate:
    feature: int
    score: float
    effect_size: float
    consistency: float
    reference_activation: float
    mean_refusal: float
    mean_other: float
    validation: dict = field(default_factory=dict)


# ------------------------------------------------------------------ activations on spans


def span_residuals(steered: SteeredModel, messages: list[dict], span_text: str) -> torch.Tensor:
    """Hook-layer residuals (n_tokens, d_in) over the tokens of `span_text` inside the
    chat-rendered `messages` (the last occurrence)."""
    tok, sae = steered.loaded.tokenizer, steered.sae
    last = messages[-1]["role"]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=last == "user")
    start = text.rfind(span_text)
    if start < 0:
        raise ValueError("span not found in the rendered chat")
    end = start + len(span_text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = torch.tensor([s < end and e > start for s, e in enc["offset_mapping"]])
    ids = torch.tensor([enc["input_ids"]], device=steered.loaded.device)
    h = run_to_layer(steered.loaded.model, sae.cfg.hook_layer, ids, torch.ones_like(ids))
    return h[0][mask.to(h.device)].float()


def span_activations(steered: SteeredModel, messages: list[dict], span_text: str) -> torch.Tensor:
    """SAE activations (n_tokens, d_sae) at the hook layer over the tokens of `span_text`."""
    with torch.no_grad():
        return steered.sae.encode(span_residuals(steered, messages, span_text)).cpu()


def contrast(steered: SteeredModel, harmful: list[str], compliant: dict[str, str], harmless: list[str],
             progress: bool = True) -> dict[str, torch.Tensor]:
    """Per-sequence mean activations and fire flags for refusal replies, compliant replies
    and harmless prompts, plus all refusal-reply token activations."""
    groups: dict[str, list[torch.Tensor]] = {"refusal": [], "compliant": [], "harmless": []}
    refusal_tokens = []
    jobs = []
    for i, p in enumerate(harmful):
        jobs.append(("refusal", p, REFUSAL_TEMPLATES[i % len(REFUSAL_TEMPLATES)]))
        if compliant.get(p, "").strip():
            jobs.append(("compliant", p, compliant[p].strip()))
    jobs += [("harmless", p, None) for p in harmless]
    for kind, prompt, reply in tqdm(jobs, desc="contrast", unit="seq", disable=not progress):
        msgs = [{"role": "user", "content": prompt}]
        if reply is not None:
            msgs.append({"role": "assistant", "content": reply})
        acts = span_activations(steered, msgs, reply if reply is not None else prompt)
        if acts.shape[0] == 0:
            continue
        groups[kind].append(torch.stack([acts.mean(0), (acts > 0).any(0).float()]))
        if kind == "refusal":
            refusal_tokens.append(acts)
    out = {k: torch.stack(v) for k, v in groups.items() if v}
    out["refusal_tokens"] = torch.cat(refusal_tokens)
    return out


def rank_contrast_features(stats: dict[str, torch.Tensor], n: int, percentile: float) -> list[Candidate]:
    """The n features with the highest effect size x consistency for refusal replies."""
    ref = stats["refusal"]
    other = torch.cat([stats[k] for k in ("compliant", "harmless") if k in stats])
    m_r, m_o = ref[:, 0].mean(0), other[:, 0].mean(0)
    pooled = ((ref[:, 0].var(0) + other[:, 0].var(0)) / 2).sqrt() + 1e-6
    d = (m_r - m_o) / pooled
    consistency = ref[:, 1].mean(0) - other[:, 1].mean(0)
    toks = stats["refusal_tokens"]
    # Weighted by how many refusal-reply tokens it fires on: a feature for one word ("that" in
    # "help with that") clamped at every position breaks the text instead of steering it.
    token_rate = (toks > 0).float().mean(0)
    score = d * consistency.clamp_min(0) * token_rate
    top = score.topk(min(n, score.numel())).indices.tolist()
    out = []
    for f in top:
        fired = toks[:, f][toks[:, f] > 0]
        m_f = float(torch.quantile(fired, percentile / 100)) if fired.numel() else 0.0
        out.append(Candidate(f, round(float(score[f]), 4), round(float(d[f]), 4), round(float(consistency[f]), 4),
                             round(m_f, 4), round(float(m_r[f]), 4), round(float(m_o[f]), 4)))
    return [c for c in out if c.reference_activation > 0 and c.score > 0]


# ------------------------------------------------------------------ the refusal direction


def direction_stats(steered: SteeredModel, harmful: list[str], compliant: dict[str, str], progress: bool = True) -> dict:
    """The refusal direction (mean residual over refusal-reply tokens minus mean residual over
    compliant-reply tokens) and, per feature, mean activation and firing rate on each side."""
    jobs = [("refusal", p, REFUSAL_TEMPLATES[i % len(REFUSAL_TEMPLATES)]) for i, p in enumerate(harmful)]
    jobs += [("compliant", p, compliant[p].strip()) for p in harmful if compliant.get(p, "").strip()]
    if not any(kind == "compliant" for kind, _, _ in jobs):
        raise ValueError("the refusal direction needs the model's own (compliant) replies to the harmful prompts")
    sums: dict[str, dict] = {}
    for kind, prompt, reply in tqdm(jobs, desc="refusal direction", unit="seq", disable=not progress):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        x = span_residuals(steered, msgs, reply)
        if x.shape[0] == 0:
            continue
        with torch.no_grad():
            a = steered.sae.encode(x).float()
        acc = sums.setdefault(kind, {"x": 0.0, "a": 0.0, "fired": 0.0, "tokens": 0, "seqs": 0})
        acc["x"] = acc["x"] + x.double().sum(0).cpu()
        acc["a"] = acc["a"] + a.double().sum(0).cpu()
        acc["fired"] = acc["fired"] + (a > 0).any(0).double().cpu()
        acc["tokens"] += x.shape[0]
        acc["seqs"] += 1
    if set(sums) != {"refusal", "compliant"}:
        raise ValueError("no reply tokens found for the refusal direction")
    r, c = sums["refusal"], sums["compliant"]
    return {
        "direction": r["x"] / r["tokens"] - c["x"] / c["tokens"],
        "mean_refusal": r["a"] / r["tokens"], "mean_compliant": c["a"] / c["tokens"],
        "fire_refusal": r["fired"] / r["seqs"], "fire_compliant": c["fired"] / c["seqs"],
        "tokens": {"refusal": r["tokens"], "compliant": c["tokens"]},
        "sequences": {"refusal": r["seqs"], "compliant": c["seqs"]},
    }


def nonneg_least_squares(a: torch.Tensor, b: torch.Tensor, sweeps: int = 500, tol: float = 1e-12) -> torch.Tensor:
    """argmin_{c >= 0} |a c - b|^2 by cyclic coordinate descent (a: n x k, small k)."""
    a, b = a.detach().double(), b.detach().double()
    gram, rhs = a.T @ a, a.T @ b
    c = torch.zeros(a.shape[1], dtype=torch.float64)
    for _ in range(sweeps):
        moved = 0.0
        for j in range(c.numel()):
            if gram[j, j] <= 0:
                continue
            new = max(0.0, float(c[j] + (rhs[j] - gram[j] @ c) / gram[j, j]))
            moved = max(moved, abs(new - float(c[j])))
            c[j] = new
        if moved < tol:
            break
    return c


def pursue_direction(directions: torch.Tensor, target: torch.Tensor, k: int,
                     allowed: torch.Tensor | None = None) -> tuple[list[int], torch.Tensor]:
    """Greedy non-negative pursuit: up to k rows of `directions` (n x d) and coefficients c >= 0
    with sum_i c_i directions[f_i] close to `target`. Each step adds the allowed row with the
    largest inner product with what is still unexplained, then refits all coefficients."""
    w, t = directions.detach().double(), target.detach().double()
    open_ = torch.ones(w.shape[0], dtype=torch.bool) if allowed is None else allowed.clone().bool()
    chosen: list[int] = []
    coef = torch.zeros(0, dtype=torch.float64)
    left = t.clone()
    while len(chosen) < k:
        score = (w @ left).masked_fill(~open_, float("-inf"))
        f = int(score.argmax())
        if not score[f] > 0:
            break
        chosen.append(f)
        open_[f] = False
        coef = nonneg_least_squares(w[chosen].T, t)
        left = t - coef @ w[chosen]
    keep = [i for i in range(len(chosen)) if coef[i] > 0]
    return [chosen[i] for i in keep], coef[keep]


def fit_direction(sae, stats: dict, k: int) -> tuple[list[Candidate], float]:
    """The k-feature non-negative fit of the refusal direction, as candidates whose reference
    activation is the fitted coefficient, and the cosine between fit and direction."""
    r = stats["direction"].detach().double()
    dirs = sae.decoder_directions(list(range(sae.d_sae))).detach().double().cpu()
    allowed = stats["mean_refusal"] > stats["mean_compliant"]
    feats, coef = pursue_direction(dirs, r, k, allowed)
    if not feats:
        return [], 0.0
    fit = coef @ dirs[feats]
    cos = float(fit @ r / (fit.norm() * r.norm() + 1e-12))
    unit = r / (r.norm() + 1e-12)
    out = []
    for f, c in zip(feats, coef.tolist()):
        row = dirs[f]
        out.append(Candidate(
            f, score=round(c * float(row @ unit) / float(r.norm()), 4),
            effect_size=round(float(row @ unit / (row.norm() + 1e-12)), 4),
            consistency=round(float(stats["fire_refusal"][f] - stats["fire_compliant"][f]), 4),
            reference_activation=round(c, 4), mean_refusal=round(float(stats["mean_refusal"][f]), 4),
            mean_other=round(float(stats["mean_compliant"][f]), 4)))
    return out, round(cos, 4)


# ------------------------------------------------------------------ steering sweeps


def settings_for(strength: float, guidance: bool = False) -> SafetySettings:
    mode = GuidanceMode.HINT if guidance else GuidanceMode.NONE
    return SafetySettings(level=SafetyLevel(f"s={strength:g}", mode, strength, False))


def refusal_rate(steered: SteeredModel, prompts: list[str], settings: SafetySettings, max_new_tokens: int, batch_size: int,
                 replies: list | None = None) -> float:
    """Fraction of greedy replies the engine's judge calls refusals."""
    if not prompts:
        return 0.0
    out = generate_batch(steered, prompts, settings, max_new_tokens, batch_size)
    if replies is not None:
        replies.extend(out)
    return sum(r.verdict.refused for r in out) / len(out)


def sweep(steered: SteeredModel, features: list[int], references: list[float], harmful: list[str], harmless: list[str],
          points: list[tuple[float, bool]], max_new_tokens: int = 24, batch_size: int = 32,
          progress: bool = True) -> list[dict]:
    """Refusal rates on harmful and harmless prompts at each (strength, guidance) point."""
    subset = steered.with_features(features, references)
    rows = []
    for s, guided in tqdm(points, desc="sweep", unit="setting", disable=not progress):
        t0 = time.perf_counter()
        examples: list = []
        st = settings_for(s, guided)
        rows.append({
            "strength": s, "guidance": guided,
            "harmful_refusal": round(refusal_rate(subset, harmful, st, max_new_tokens, batch_size, examples), 4),
            "harmless_refusal": round(refusal_rate(subset, harmless, st, max_new_tokens, batch_size, examples), 4),
            "seconds": round(time.perf_counter() - t0, 1),
            "examples": [{"prompt": r.prompt[:80], "reply": r.reply[:120], "refused": r.verdict.refused}
                         for r in examples[:2] + examples[len(harmful):len(harmful) + 2]],
        })
    return rows


def _validate(steered: SteeredModel, features: list[int], references: list[float], val_harmful: list[str],
              val_harmless: list[str], settings: SafetySettings, cfg: FindConfig) -> dict:
    subset = steered.with_features(features, references)
    return {"harmful_refusal": refusal_rate(subset, val_harmful, settings, cfg.max_new_tokens, cfg.batch_size),
            "harmless_refusal": refusal_rate(subset, val_harmless, settings, cfg.max_new_tokens, cfg.batch_size)}


def _merit(v: dict) -> float:
    """Harmful refusal gained, less a quarter of the harmless refusal it costs."""
    return v["harmful_refusal"] - 0.25 * v["harmless_refusal"]


def find_refusal_features(steered: SteeredModel, harmful: list[str], compliant: dict[str, str], harmless: list[str],
                          val_harmful: list[str], val_harmless: list[str], cfg: FindConfig | None = None,
                          progress: bool = True, previous: dict | None = None) -> tuple[list[RefusalFeature], dict]:
    """Find, validate and choose refusal features; returns them and a record of how.

    `previous` (an earlier contrast run's record) reuses its validated candidates and only
    redoes the combination.
    """
    cfg = cfg or FindConfig()
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    if cfg.method == "direction":
        if previous is not None:
            raise ValueError("reusing an earlier run applies to the contrast method only")
        return _find_by_direction(steered, harmful, compliant, val_harmful, val_harmless, cfg, progress)
    return _find_by_contrast(steered, harmful, compliant, harmless, val_harmful, val_harmless, cfg, progress,
                             previous)


def _find_by_direction(steered: SteeredModel, harmful, compliant, val_harmful, val_harmless, cfg: FindConfig,
                       progress: bool) -> tuple[list[RefusalFeature], dict]:
    sizes = sorted({int(k) for k in cfg.sizes if int(k) > 0})
    if not sizes:
        raise ValueError("no set size to fit (sizes must be positive)")
    stats = direction_stats(steered, harmful, compliant, progress)
    probe = settings_for(cfg.probe_strength)
    base = refusal_rate(steered, val_harmful, settings_for(0.0), cfg.max_new_tokens, cfg.batch_size)
    sets: list[dict] = []
    for k in tqdm(sizes, desc=f"validating sets at s={cfg.probe_strength:g}", unit="set", disable=not progress):
        cands, cos = fit_direction(steered.sae, stats, k)
        if not cands or (sets and len(cands) == len(sets[-1]["candidates"])):
            continue  # the pursuit ran out of features that help
        v = _validate(steered, [c.feature for c in cands], [c.reference_activation for c in cands],
                      val_harmful, val_harmless, probe, cfg)
        sets.append({"size": len(cands), "cosine": cos, "validation": v, "candidates": cands})
    if not sets:
        raise ValueError("no SAE feature points along the refusal direction")
    best = max(sets, key=lambda r: (_merit(r["validation"]), -r["size"]))
    features = [RefusalFeature(c.feature, c.reference_activation, c.score) for c in best["candidates"]]
    r = stats["direction"]
    record = {
        "method": "direction: difference of mean hook-layer residuals over teacher-forced refusal replies and "
                  "the model's own compliant replies; non-negative greedy pursuit over SAE decoder rows (features "
                  "firing more on refusals) fits it; m_f = the feature's fitted coefficient, so s = 1 adds the "
                  "fit at the measured size; sets of each size validated by clamping at the probe strength, chosen "
                  "by harmful refusal - 0.25 x harmless refusal",
        "config": asdict(cfg),
        "data": {"harmful": len(harmful), "compliant": stats["sequences"]["compliant"], "tokens": stats["tokens"],
                 "val_harmful": len(val_harmful), "val_harmless": len(val_harmless)},
        "direction_norm": round(float(r.norm()), 4),
        "baseline": {"harmful_refusal": base},
        "combined_harmful_refusal": best["validation"]["harmful_refusal"],
        "chosen_size": best["size"],
        "sets": [{"size": t["size"], "cosine": t["cosine"], "features": [c.feature for c in t["candidates"]],
                  **t["validation"]} for t in sets],
        "candidates": [asdict(c) for c in best["candidates"]],
    }
    return features, record


def _find_by_contrast(steered: SteeredModel, harmful, compliant, harmless, val_harmful, val_harmless, cfg: FindConfig,
                      progress: bool, previous: dict | None) -> tuple[list[RefusalFeature], dict]:
    probe = settings_for(cfg.probe_strength)
    if previous is not None:  # candidates already ranked and validated one by one in an earlier run
        cands = [Candidate(**c) for c in previous["candidates"]]
        base = float(previous["baseline"]["harmful_refusal"])
    else:
        stats = contrast(steered, harmful, compliant, harmless, progress)
        cands = rank_contrast_features(stats, cfg.candidates, cfg.percentile)
        if not cands:
            raise ValueError("no feature is more active on refusal replies than on the other texts")
        base = refusal_rate(steered, val_harmful, settings_for(0.0), cfg.max_new_tokens, cfg.batch_size)
        for c in tqdm(cands, desc=f"validating at s={cfg.probe_strength:g}", unit="feature", disable=not progress):
            c.validation = _validate(steered, [c.feature], [c.reference_activation], val_harmful, val_harmless,
                                     probe, cfg)
    order = sorted(cands, key=lambda c: (_merit(c.validation), c.score), reverse=True)
    chosen = [order[0]]
    best = order[0].validation["harmful_refusal"]
    trials = []
    for c in tqdm(order[1:], desc="combining", unit="feature", disable=not progress):
        if len(chosen) >= cfg.max_features or best >= 1.0:
            break
        if c.validation["harmful_refusal"] <= base:
            continue
        trial = chosen + [c]
        rate = refusal_rate(steered.with_features([t.feature for t in trial], [t.reference_activation for t in trial]),
                            val_harmful, probe, cfg.max_new_tokens, cfg.batch_size)
        trials.append({"features": [t.feature for t in trial], "harmful_refusal": rate})
        if rate >= best + cfg.min_gain:
            chosen, best = trial, rate
    features = [RefusalFeature(c.feature, c.reference_activation, c.score) for c in chosen]
    record = {
        "method": "contrast of teacher-forced refusal replies vs compliant replies and harmless prompts; "
                  f"score = Cohen's d x firing-rate difference x refusal-token firing rate; m_f = {cfg.percentile:g}th percentile of non-zero "
                  "activations on refusal-reply tokens; validated by clamping at the probe strength",
        "config": asdict(cfg),
        "data": {"harmful": len(harmful), "compliant": sum(1 for p in harmful if compliant.get(p)),
                 "harmless": len(harmless), "val_harmful": len(val_harmful), "val_harmless": len(val_harmless)},
        "baseline": {"harmful_refusal": base},
        "combined_harmful_refusal": best,
        "combinations": trials,
        "candidates": [asdict(c) for c in cands],
    }
    return features, record


def write_features(folder: Path, features: list[RefusalFeature], record: dict, sae_name: str, hook_layer: int,
                   command: str) -> Path:
    """features.json beside the SAE, keeping labels already there."""
    path = Path(folder) / "features.json"
    old = FeatureSet.load(path) if path.is_file() else FeatureSet()
    for f in features:
        f.label = f.label or old.labels.get(f.feature)
    fs = FeatureSet(refusal_features=features, harm_gate=old.harm_gate, labels=old.labels, hook_layer=hook_layer,
                    sae=sae_name, command=command, extra={"find_refusal": record})
    return fs.save(Path(folder))


def load_replies(path: str | Path) -> dict[str, str]:
    """prompt -> reply from a JSONL file such as a collection's generated.jsonl."""
    return {row["prompt"]: row["reply"] for row in read_jsonl(Path(path), required=("prompt", "reply"))}
