"""Where a decode step's time goes besides the model's forward: paired, in one process.

Two ways to decode the same prompt greedily, exactly --tokens tokens each, in alternating
rounds (medians printed; tokens/s over the whole call, prefill included):

  generate          transformers' `generate`, plain model (what bench/vs_llama_cpp.py times)
  lean loop         a hand-written greedy loop over the model's forward with a KV cache, plain;
                    same tokens as `generate` (checked)

lean loop / generate says how much `generate`'s own bookkeeping costs a step. What the hook costs
is bench/steering_overhead.py's measure.

    python bench/decode_overhead.py --model smollm2-135m [--tokens 64] [--rounds 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPT = "Write a short story about a lighthouse keeper."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from transformers import DynamicCache

    from steerchat.engine.core.levels import SafetySettings
    from steerchat.engine.runtime.session import open_session

    steered = open_session(args.model).steered  # the chat's own loading (int8 weights on a CPU where chosen)
    lm, n = steered.loaded, args.tokens
    model, tok = lm.model, lm.tokenizer
    ids = steered.prepare([], PROMPT, SafetySettings()).input_ids
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
              pad_token_id=tok.pad_token_id)
    def generate() -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        return n / (time.perf_counter() - t), out[0, ids.shape[1]:]

    def lean() -> tuple[float, torch.Tensor]:
        t = time.perf_counter()
        toks = []
        with torch.inference_mode():
            out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
            for i in range(n):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                toks.append(nxt)
                if i < n - 1:
                    out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        return n / (time.perf_counter() - t), torch.cat(toks, 1)[0]

    runs = {"generate": [], "lean loop": []}
    generate(), lean()  # warm-up
    same = True
    for _ in range(args.rounds):
        g, tg = generate()
        lo, tl = lean()
        same = same and torch.equal(tg, tl)
        runs["generate"].append(g)
        runs["lean loop"].append(lo)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.model}, {n} tokens, {args.threads} threads, {args.rounds} alternating rounds (median, min-max):")
    for k, v in runs.items():
        print(f"  {k:15} {med[k]:6.1f} tok/s  ({min(v):.1f}-{max(v):.1f})")
    print(f"  lean loop / generate     {med['lean loop'] / med['generate']:.2f}  (same tokens: {same})")


if __name__ == "__main__":
    main()
