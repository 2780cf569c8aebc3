"""Short labels for SAE features, read off the contexts where each one fires most.

Over a collection's shards, every (feature, token) pair accumulates the feature's
activation mass. A token is characteristic of a feature when it carries a large share
of the feature's mass and is rarer overall: score = p(t|f) * log(p(t|f) / p(t)). The
label is the top three characteristic tokens, plus the kind of document the feature
mostly fires in (refusal, reply, pair, prompt, text) when one kind holds most of its
mass. The top-activating contexts themselves are kept for the UI and for checking.

Features that fired at least `min_fires` times are ranked by total activation mass, then
the rarer ones by mass, then those that never fired; the first `top` get labels. With
`top=None` (or `top` >= d_sae) every feature gets one. A feature that fired fewer than
`min_fires` times is too rare for the score, so its label says so and lists the tokens it
fired on, by mass ("rare: a / b"); one that never fired in the collection is labelled
NEVER_FIRED. Each record says which of the three it is ("status": "normal", "rare" or
"never fired").
"""

from __future__ import annotations

from pathlib import Path

import torch
from steerchat.engine.core.jsonl import iter_jsonl
from steerchat.engine.pipelines.activations import DOCS, Manifest, load_shard
from steerchat.engine.runtime.sae import SAE
from tqdm.auto import tqdm

CONTEXTS_NAME = "feature_contexts.json"
LABEL_WORDS = 3  # characteristic tokens in a label
MIN_TOKEN_SHARE = 0.03  # a token must carry at least this share of a feature's mass to name it
KIND_MAJORITY = 0.6  # a document kind joins the label when it holds this share of the feature's mass
ENCODE_CHUNK = 4096  # activations encoded at once
RARE_PREFIX = "rare: "  # label of a feature that fired, but fewer than min_fires times
NEVER_FIRED = "never fired in the labelling corpus"  # label of a feature that never fired


def _clean(tok: str) -> str:
    return tok.replace("Ġ", " ").replace("Ċ", "\\n").replace("▁", " ").strip() or repr(tok)


@torch.no_grad()
def label_features(sae: SAE, folder: str | Path, tokenizer, top: int | None = 1000, min_fires: int = 5,
                   contexts: int = 3, window: int = 8, progress: bool = True) -> tuple[dict[int, str], dict]:
    """Labels for the `top` most active features, and their top contexts (None: every feature).

    Ranking: features that fired at least `min_fires` times, by total activation mass; then
    the rarer ones, by mass; then those that never fired, by index."""
    folder = Path(folder)
    manifest = Manifest.load(folder)
    kinds = [doc.get("kind", "?") for _, doc in iter_jsonl(folder / DOCS)]
    vocab = len(tokenizer)
    keys, vals, kind_keys = [], [], []
    token_count = torch.zeros(vocab, dtype=torch.float64)
    best_val = torch.zeros(sae.d_sae, contexts)
    best_at = torch.full((sae.d_sae, contexts, 2), -1, dtype=torch.long)  # (shard, row)
    kind_names = sorted(set(kinds))
    kind_of_doc = torch.tensor([kind_names.index(k) for k in kinds])
    for si in tqdm(range(len(manifest.shards)), desc="labelling", unit="shard", disable=not progress):
        shard = load_shard(folder, manifest.shards[si])
        ids = shard["token_ids"].long()
        token_count += torch.bincount(ids, minlength=vocab).double()
        for start in range(0, ids.shape[0], ENCODE_CHUNK):
            f = sae.encode(shard["acts"][start : start + ENCODE_CHUNK].float())
            rows, feats = f.nonzero(as_tuple=True)
            a = f[rows, feats]
            keys.append(feats * vocab + ids[start + rows])
            vals.append(a)
            kind_keys.append(feats * len(kind_names) + kind_of_doc[shard["doc"].long()[start + rows]])
            # keep the strongest `contexts` activations per feature, from distinct positions
            top_vals, top_rows = f.topk(min(contexts, f.shape[0]), dim=0)
            for c in range(top_vals.shape[0]):
                better = top_vals[c] > best_val.min(dim=1).values
                slot = best_val.argmin(dim=1)
                fs = better.nonzero().squeeze(1)
                best_val[fs, slot[fs]] = top_vals[c, fs]
                best_at[fs, slot[fs], 0] = si
                best_at[fs, slot[fs], 1] = start + top_rows[c, fs]
    keys_t, vals_t, kinds_t = torch.cat(keys), torch.cat(vals).double(), torch.cat(kind_keys)
    uniq, inv = keys_t.unique(return_inverse=True)
    mass = torch.zeros(uniq.shape[0], dtype=torch.float64).index_add_(0, inv, vals_t)
    feat_of, tok_of = uniq // vocab, uniq % vocab
    feat_mass = torch.zeros(sae.d_sae, dtype=torch.float64).index_add_(0, feat_of, mass)
    fires = torch.bincount(keys_t // vocab, minlength=sae.d_sae)
    kind_mass = torch.zeros(sae.d_sae * len(kind_names), dtype=torch.float64).index_add_(0, kinds_t, vals_t)
    kind_mass = kind_mass.view(sae.d_sae, len(kind_names))
    p_tok = token_count / token_count.sum()
    p_t_f = mass / feat_mass[feat_of]
    score = p_t_f * torch.log(p_t_f / p_tok[tok_of].clamp_min(1e-12))
    order = torch.argsort(feat_of * 1e6 - score.clamp(-1e5, 1e5))  # by feature, best tokens first
    by_mass = feat_mass.argsort(descending=True).tolist()
    common = [f for f in by_mass if fires[f] >= min_fires]
    rare = [f for f in by_mass if 0 < fires[f] < min_fires]
    dead = [f for f in range(sae.d_sae) if fires[f] == 0]
    chosen = (common + rare + dead)[:top]
    common_set, rare_set = set(common) & set(chosen), set(rare) & set(chosen)
    firsts: dict[int, list[int]] = {}
    for j in order.tolist():
        f = int(feat_of[j])
        if f in common_set and len(firsts.setdefault(f, [])) < LABEL_WORDS and p_t_f[j] >= MIN_TOKEN_SHARE:
            firsts[f].append(j)
    rare_tokens: dict[int, list[int]] = {}  # a rare feature's tokens, by its mass on them
    if rare_set:
        for j in torch.argsort(feat_of * 2.0 - p_t_f).tolist():  # by feature, largest share first
            f = int(feat_of[j])
            if f in rare_set:
                rare_tokens.setdefault(f, []).append(j)
    labels: dict[int, str] = {}
    record: dict[str, dict] = {}
    shard_cache: dict[int, dict] = {}
    for f in chosen:
        if fires[f] == 0:
            labels[f] = NEVER_FIRED
            record[str(f)] = {"label": labels[f], "status": "never fired", "fires": 0, "mass": 0.0,
                              "kind_share": {}, "contexts": []}
            continue
        share = kind_mass[f] / kind_mass[f].sum()
        if f in rare_set:
            words = list(dict.fromkeys(_clean(tokenizer.convert_ids_to_tokens(int(tok_of[j])))
                                       for j in rare_tokens[f]))[:LABEL_WORDS]
            labels[f], status = RARE_PREFIX + " / ".join(words), "rare"
        else:
            words = list(dict.fromkeys(_clean(tokenizer.convert_ids_to_tokens(int(tok_of[j]))) for j in firsts.get(f, [])))
            kind = kind_names[int(share.argmax())] if float(share.max()) >= KIND_MAJORITY else None
            labels[f] = " / ".join(words) + (f" [{kind}]" if kind else "") if words else (f"[{kind}]" if kind else "diffuse")
            status = "normal"
        ctx = []
        for c in best_val[f].argsort(descending=True).tolist():
            si, row = best_at[f, c].tolist()
            if si < 0:
                continue
            shard = shard_cache.setdefault(si, load_shard(folder, manifest.shards[si]))
            ctx.append({"activation": round(float(best_val[f, c]), 3),
                        "text": _context(tokenizer, shard, row, window)})
        record[str(f)] = {"label": labels[f], "status": status, "fires": int(fires[f]), "mass": round(float(feat_mass[f]), 2),
                          "kind_share": {k: round(float(s), 3) for k, s in zip(kind_names, share.tolist())},
                          "contexts": ctx}
    return labels, record


def _context(tokenizer, shard: dict, row: int, window: int) -> str:
    """The stored tokens of the same document just before and at `row`, the firing token in [[ ]]."""
    doc, pos = int(shard["doc"][row]), int(shard["pos"][row])
    same = (shard["doc"] == doc) & (shard["pos"] <= pos) & (shard["pos"] > pos - window)
    ids = shard["token_ids"][same].tolist()
    before = tokenizer.decode(ids[:-1]) if len(ids) > 1 else ""
    return (before + "[[" + tokenizer.decode(ids[-1:]) + "]]").replace("\n", " ")[-120:]

