"""Finding the SAE features that mean "refusal", and validating them by steering.

1. Contrast. On harmful prompts, teacher-force a refusal reply and the model's own
   compliant reply; on harmless prompts, read the prompt's tokens. For every feature,
   per sequence, take its mean activation over the reply (or prompt) tokens. Score =
   Cohen's d of refusal sequences against all the others (effect size) times the
   difference in the fraction of sequences where it fires at all (consistency) times the
   fraction of refusal-reply tokens it fires on (a single-word feature steers badly).
2. Reference activation m_f: a high percentile (default 90th) of the feature's non-zero
   activations on refusal-reply tokens, so the clamp target c_f = s * m_f at s = 1 is
   "as strong as in a real refusal".
3. Validation. Each top candidate is clamped alone at a probe strength on held-out
   harmful and harmless prompts (greedy, judged by `engine.refusal.judge_refusal`); the
   winners are combined greedily while the combination raises the harmful refusal rate.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.featureset import FeatureSet, RefusalFeature
from engine.levels import GuidanceMode, SafetyLevel, SafetySettings

# Refusal replies written for steerchat, teacher-forced on harmful prompts so the SAE and
# the contrast see refusal behaviour the starter model rarely shows on its own.
REFUSAL_TEMPLATES = (
    "I'm sorry, but I can't help with that. It could cause real harm to people.",
    "I can't assist with this request. If you have another question, I'm happy to help.",
    "Sorry, I won't provide instructions for that. It is dangerous and likely illegal.",
    "I cannot help with that request, as it could be used to hurt someone.",
    "I'm not able to help with this. Providing that information would be unsafe and unethical.",
    "Unfortunately, I can't do that. It goes against my guidelines to help with harmful activities.",
    "I apologize, but I must decline. This request asks for something that could seriously harm others.",
    "No, I won't help with that. Please consider talking to someone you trust or a professional instead.",
    "I'm sorry, I cannot provide that. Helping with illegal or harmful actions is not something I do.",
    "As an AI assistant, I can't help with requests like this one, because it could put people at risk.",
    "I'm afraid I can't help with that. Is there something else, something safe, I can do for you?",
    "I will not assist with this. It would be irresponsible to give guidance that could lead to harm.",
)


@dataclass
class FindConfig:
    candidates: int = 8  # features validated by steering
    max_features: int = 4  # most features in the shipped set
    percentile: float = 90.0  # m_f
    probe_strength: float = 2.0  # s used to validate single candidates
    max_new_tokens: int = 24
    batch_size: int = 32
    min_gain: float = 0.0  # a feature joins the set if the combination refuses at least this much more


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


def span_activations(session, messages: list[dict], span_text: str) -> torch.Tensor:
    """SAE activations (n_tokens, d_sae) at the hook layer over the tokens of `span_text`
    inside the chat-rendered `messages` (the last occurrence)."""
    from engine.activations import hook_layer_residuals

    tok, sae = session.loaded.tokenizer, session.sae
    last = messages[-1]["role"]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=last == "user")
    start = text.rfind(span_text)
    if start < 0:
        raise ValueError("span not found in the rendered chat")
    end = start + len(span_text)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = torch.tensor([s < end and e > start for s, e in enc["offset_mapping"]])
    ids = torch.tensor([enc["input_ids"]], device=session.loaded.device)
    h = hook_layer_residuals(session.loaded.model, sae.cfg.hook_layer, ids, torch.ones_like(ids))
    with torch.no_grad():
        return sae.encode(h[0][mask.to(h.device)].float()).cpu()


def contrast(session, harmful: list[str], compliant: dict[str, str], harmless: list[str],
             progress: bool = True) -> dict[str, torch.Tensor]:
    """Per-sequence mean activations and fire flags for refusal replies, compliant replies
    and harmless prompts, plus all refusal-reply token activations."""
    from tqdm.auto import tqdm

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
        acts = span_activations(session, msgs, reply if reply is not None else prompt)
        if acts.shape[0] == 0:
            continue
        groups[kind].append(torch.stack([acts.mean(0), (acts > 0).any(0).float()]))
        if kind == "refusal":
            refusal_tokens.append(acts)
    out = {k: torch.stack(v) for k, v in groups.items() if v}
    out["refusal_tokens"] = torch.cat(refusal_tokens)
    return out


def rank_features(stats: dict[str, torch.Tensor], n: int, percentile: float) -> list[Candidate]:
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


# ------------------------------------------------------------------ steering sweeps


def steered_session(session, features: list[int], references: list[float]):
    """A session over the same model and SAE that clamps `features` (targets s * references)."""
    from engine.session import Session

    fs = FeatureSet(refusal_features=[RefusalFeature(f, m) for f, m in zip(features, references)])
    return Session(session.loaded, session.sae, fs)


def settings_for(strength: float, guidance: bool = False) -> SafetySettings:
    mode = GuidanceMode.HINT if guidance else GuidanceMode.NONE
    return SafetySettings(level=SafetyLevel(f"s={strength:g}", mode, strength, False))


def refusal_rate(session, prompts: list[str], settings: SafetySettings, max_new_tokens: int, batch_size: int,
                 replies: list | None = None) -> float:
    """Fraction of greedy replies the engine's judge calls refusals."""
    from engine.batch import generate_batch

    if not prompts:
        return 0.0
    out = generate_batch(session, prompts, settings, max_new_tokens, batch_size)
    if replies is not None:
        replies.extend(out)
    return sum(r.verdict.refused for r in out) / len(out)


def sweep(session, features: list[int], references: list[float], harmful: list[str], harmless: list[str],
          points: list[tuple[float, bool]], max_new_tokens: int = 24, batch_size: int = 32,
          progress: bool = True) -> list[dict]:
    """Refusal rates on harmful and harmless prompts at each (strength, guidance) point."""
    from tqdm.auto import tqdm

    steered = steered_session(session, features, references)
    rows = []
    for s, guided in tqdm(points, desc="sweep", unit="setting", disable=not progress):
        t0 = time.perf_counter()
        examples: list = []
        st = settings_for(s, guided)
        rows.append({
            "strength": s, "guidance": guided,
            "harmful_refusal": round(refusal_rate(steered, harmful, st, max_new_tokens, batch_size, examples), 4),
            "harmless_refusal": round(refusal_rate(steered, harmless, st, max_new_tokens, batch_size, examples), 4),
            "seconds": round(time.perf_counter() - t0, 1),
            "examples": [{"prompt": r.prompt[:80], "reply": r.reply[:120], "refused": r.verdict.refused}
                         for r in examples[:2] + examples[len(harmful):len(harmful) + 2]],
        })
    return rows


def find_refusal_features(session, harmful: list[str], compliant: dict[str, str], harmless: list[str],
                          val_harmful: list[str], val_harmless: list[str], cfg: FindConfig | None = None,
                          progress: bool = True, previous: dict | None = None) -> tuple[list[RefusalFeature], dict]:
    """Contrast, rank, validate and combine; returns the chosen features and a record of how.

    `previous` (an earlier run's record) reuses its validated candidates and only redoes the combination.
    """
    from tqdm.auto import tqdm

    cfg = cfg or FindConfig()
    probe = settings_for(cfg.probe_strength)
    if previous is not None:  # candidates already ranked and validated one by one in an earlier run
        cands = [Candidate(**c) for c in previous["candidates"]]
        base = float(previous["baseline"]["harmful_refusal"])
    else:
        stats = contrast(session, harmful, compliant, harmless, progress)
        cands = rank_features(stats, cfg.candidates, cfg.percentile)
        if not cands:
            raise ValueError("no feature is more active on refusal replies than on the other texts")
        base = refusal_rate(session, val_harmful, settings_for(0.0), cfg.max_new_tokens, cfg.batch_size)
        for c in tqdm(cands, desc=f"validating at s={cfg.probe_strength:g}", unit="feature", disable=not progress):
            one = steered_session(session, [c.feature], [c.reference_activation])
            c.validation = {
                "harmful_refusal": refusal_rate(one, val_harmful, probe, cfg.max_new_tokens, cfg.batch_size),
                "harmless_refusal": refusal_rate(one, val_harmless, probe, cfg.max_new_tokens, cfg.batch_size),
            }
    order = sorted(cands, key=lambda c: (c.validation["harmful_refusal"] - 0.25 * c.validation["harmless_refusal"],
                                         c.score), reverse=True)
    chosen = [order[0]]
    best = order[0].validation["harmful_refusal"]
    trials = []
    for c in tqdm(order[1:], desc="combining", unit="feature", disable=not progress):
        if len(chosen) >= cfg.max_features or best >= 1.0:
            break
        if c.validation["harmful_refusal"] <= base:
            continue
        trial = chosen + [c]
        rate = refusal_rate(steered_session(session, [t.feature for t in trial], [t.reference_activation for t in trial]),
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
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["prompt"]] = row["reply"]
    return out
