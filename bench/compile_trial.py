"""torch.compile against eager decoding, on one model in one weight format, paired.

Two copies of the model are loaded as the chat loads them (`--format int8` is steerchat's
int8 weights over bfloat16, `bfloat16`/`float32` dense), without the SAE hook. One copy's
`forward` is wrapped in `torch.compile` (inductor, static shapes) and decodes with a static
KV cache; the other decodes eagerly. The first compiled generate is timed on its own (it
compiles); then the two alternate for --rounds rounds, so a change in the machine's load hits
both alike. Printed: the compile time, each engine's tokens/s per round and median, the
ratio compiled / eager, and whether the two produced the same greedy tokens.

    python bench/compile_trial.py --model smollm2-135m --format int8 [--tokens 64] [--rounds 4] [--threads 2]

A trial, not a path the chat takes: the hook's gate and recording are data-dependent Python,
which would break the compiled graph, and compiling takes seconds to minutes on first use.
"""

from __future__ import annotations

import argparse
import statistics
import time

# the llama.cpp benchmark's prompt and rendering, so the two benchmarks' figures compare
from vs_llama_cpp import _prompt_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--format", default="int8", choices=("int8", "bfloat16", "float32"))
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from steerchat.engine.runtime.loading import load_model

    def load():
        if args.format == "int8":  # as the chat loads it
            return load_model(args.model, quant="int8", single_stream=True)
        return load_model(args.model, quant="none", dtype=args.format)

    eager, compiled = load(), load()
    tok = eager.tokenizer
    ids = torch.tensor([_prompt_ids(tok)])
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, temperature=None,
              top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
    compiled.model.forward = torch.compile(compiled.model.forward, dynamic=False)

    def run(lm, **extra):
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(ids, **kw, **extra)
        return args.tokens / (time.perf_counter() - t), out

    _, out_eager = run(eager)
    t = time.perf_counter()
    _, out_compiled = run(compiled, cache_implementation="static")
    print(f"{args.model} {args.format}: first compiled generate {time.perf_counter() - t:.1f} s (compiling)")
    speeds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.rounds):
        speeds["eager"].append(run(eager)[0])
        speeds["compiled"].append(run(compiled, cache_implementation="static")[0])
    for name, v in speeds.items():
        print(f"  {name:9} {statistics.median(v):6.1f} tok/s  (rounds: {', '.join(f'{x:.1f}' for x in v)})")
    ratio = statistics.median(speeds["compiled"]) / statistics.median(speeds["eager"])
    print(f"  compiled / eager {ratio:.2f}x; same greedy tokens: {bool(torch.equal(out_eager, out_compiled))}")


if __name__ == "__main__":
    main()
