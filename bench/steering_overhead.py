"""Decoding speed with the steering hook, measured side by side.

Decodes the same prompt, the same number of tokens, with (a) the plain model, (b) the
hook recording features only, (c) recording and clamping the refusal features, in
alternating rounds, and prints tokens/s for each and the ratios b/a and c/a. Absolute
speeds on a shared machine are noise; the ratios are the result.

    python bench/steering_overhead.py [--model smollm2-135m] [--tokens 64] [--rounds 5] [--threads N|auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sae", default="auto", help="SAE folder; 'auto' = shipped, else a random SAE of the paper's shape (8x d_model, k=32)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", default=None,
                    help="torch threads: a number, or 'auto' for the cores idle before each run (as a chat turn does)")
    args = ap.parse_args()
    if args.threads not in (None, "auto"):
        torch.set_num_threads(int(args.threads))

    from steerchat.engine.core.featureset import FeatureSet
    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.sae import SAE
    from steerchat.engine.runtime.steered import (
        features_path,
        load_sae_for,
        resolve_sae,
    )
    from steerchat.engine.runtime.steering import ClampRequest, SteeringHook

    lm = load_model(args.model)
    folder = resolve_sae(args.sae, lm)
    if folder is not None:
        sae = load_sae_for(lm, folder)
        path = features_path(folder, lm)
        fs = FeatureSet.load(path) if path else None
        features = [r.feature for r in fs.refusal_features] if fs and fs.refusal_features else [0, 1, 2]
        what = f"shipped SAE {folder} ({sae.d_sae} latents, k={sae.cfg.k})"
    else:
        layer = lm.entry.hook_layer if lm.entry else lm.num_layers // 2
        sae = SAE.random(lm.d_model, 8 * lm.d_model, k=32, hook_layer=layer).to(lm.device)
        features = [0, 1, 2]
        what = f"random SAE ({sae.d_sae} latents, k=32) at layer {layer}"
    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "Write a short story about a lighthouse keeper."}],
                                   add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)], device=lm.device)
    targets = torch.full((len(features),), 4.0, device=lm.device)
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, temperature=None,
              top_p=None, top_k=None, pad_token_id=tok.pad_token_id)

    record = SteeringHook(sae, sae.cfg.hook_layer, refusal_features=features, control=lambda: ClampRequest(None))
    clamp = SteeringHook(sae, sae.cfg.hook_layer, refusal_features=features, control=lambda: ClampRequest(targets))

    def run(hook) -> float:
        if args.threads == "auto":
            from steerchat.engine.runtime.threads import apply_threads

            apply_threads()
        t = time.perf_counter()
        with torch.inference_mode():
            if hook is None:
                lm.model.generate(ids, **kw)
            else:
                with hook.applied(lm.model):
                    lm.model.generate(ids, **kw)
        return args.tokens / (time.perf_counter() - t)

    run(None)  # warm-up
    speeds = {"a plain": [], "b record": [], "c record+clamp": []}
    for _ in range(args.rounds):
        speeds["a plain"].append(run(None))
        speeds["b record"].append(run(record))
        speeds["c record+clamp"].append(run(clamp))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"model {lm.name} ({lm.dtype}, {lm.device}, {torch.get_num_threads()} threads), {what}")
    print(f"{args.tokens} tokens x {args.rounds} alternating rounds, median tokens/s:")
    for k, v in med.items():
        print(f"  {k:16} {v:7.1f} tok/s")
    print(f"ratio b/a = {med['b record'] / med['a plain']:.3f}")
    print(f"ratio c/a = {med['c record+clamp'] / med['a plain']:.3f}")


if __name__ == "__main__":
    main()
