"""Harm-gate probe variants, measured on the gate's dev split only.

Encodes every fit and dev prompt of `default_gate_data` once, under both guidance modes the fit
reads (cached in --cache), then fits the probe with each L2 strength, hard-negative weight and
input (user tokens and template tokens, or user tokens only), and prints for each:

- the threshold at 95% dev-harmful recall and the share of dev benign-but-scary prompts it opens on;
- the benign threshold at 99% dev-harmful recall and the share of those prompts below it (where
  the lowering side may act);
- the share of the fit split's ordinary harmless prompts the gate opens on.

The shipped gate is l2 = 0.01, hard weight 1, user + template. No held-out set is read.

    python bench/gate_variants.py --model qwen2.5-coder-0.5b --shared ../shared/data --cache W/gate_pooled.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--shared", default="../shared/data", help="the folder default_gate_data reads")
    ap.add_argument("--cache", required=True, help="where the encodings are kept between runs (.pt)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from steerchat.engine.core.levels import GuidanceMode
    from steerchat.engine.pipelines.harm_gate import (_pooled_hidden, _splits, class_weights, default_gate_data,
                                                      fit_probe, pick_threshold)

    split = _splits(default_gate_data(Path(args.shared)), 0.3, 0)
    cache = Path(args.cache)
    if cache.exists():
        enc = torch.load(cache)
    else:
        from steerchat.engine.runtime.steered import open_steered

        steered = open_steered(args.model)
        enc = {}
        for g, (fit, dev) in split.items():
            for part, prompts in (("fit", fit), ("dev", dev)):
                xs = [torch.cat(_pooled_hidden(steered, prompts, GuidanceMode(m), 16), 1)
                      for m in ("none", "hint") if prompts]
                enc[(g, part)] = torch.cat(xs) if xs else torch.zeros(0, 0)
                print(f"encoded {g} {part}: {len(prompts)} prompts", flush=True)
        torch.save(enc, cache)
    groups = [g for g in ("harmful", "harmless", "hard") if len(enc[(g, "fit")])]
    x_all = torch.cat([enc[(g, "fit")] for g in groups])
    names = [g for g in groups for _ in range(len(enc[(g, "fit")]))]
    y = torch.tensor([float(n == "harmful") for n in names])
    d = x_all.shape[1] // 2

    def rate(v: torch.Tensor) -> str:
        return f"{float(v.float().mean()):.3f}" if len(v) else "—"

    print("input          l2      hard_w  thr(95%)  dev hard open  benign(99%)  dev hard below  fit harmless open")
    for user_only in (False, True):
        cols = slice(0, d) if user_only else slice(None)
        for l2 in (1e-3, 1e-2, 1e-1, 1.0):
            for hw in (1.0, 2.0, 4.0):
                w, b = fit_probe(x_all[:, cols], y, class_weights(names, hard_weight=hw), l2=l2)

                def score(m: torch.Tensor) -> torch.Tensor:
                    return m[:, cols] @ w + b if len(m) else torch.zeros(0)

                pos, hard = score(enc[("harmful", "dev")]), score(enc[("hard", "dev")])
                t = pick_threshold(pos, 0.95)
                tb = min(t, pick_threshold(pos, 0.99))
                harmless = score(enc[("harmless", "fit")]) if "harmless" in groups else torch.zeros(0)
                print(f"{'user only' if user_only else 'user+template':14} {l2:<7g} {hw:<7g} {t:8.2f}  "
                      f"{rate(hard >= t):>13}  {tb:11.2f}  {rate(hard < tb):>14}  {rate(harmless >= t):>17}", flush=True)


if __name__ == "__main__":
    main()
