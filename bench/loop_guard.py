"""How many replies run to the token limit in a loop, with the loop guard off and on.

For each model: a fixed seeded sample of ordinary prompts (harmless_val.json), answered
unsteered (level Off, no SAE), greedy, in batches, once with the loop guard off and once
with it on (`generate_batch(..., loop_guard=...)`, the chat's own criterion). A reply
"hit the limit in a loop" when it used all `--max-new-tokens` and `judge.is_looping`
says it loops. Prints one table row per model and setting, and writes the per-reply
figures to bench/results/loop-guard-<model>.json.

    STEERCHAT_HOME=/work/loops-home python bench/loop_guard.py --models smollm2-135m \\
        --prompts 100 --seed 0 --max-new-tokens 128 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

DATA = "/work/shared/data/harmless_val.json"


def sample_prompts(path: str, n: int, seed: int) -> list[str]:
    """`n` instructions drawn without replacement by random.Random(seed) from a JSON list."""
    rows = json.loads(Path(path).read_text())
    picked = random.Random(seed).sample(range(len(rows)), n)
    return [rows[i]["instruction"] for i in picked]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="random.Random(seed).sample picks the prompts")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from steerchat.engine.core.levels import SafetySettings
    from steerchat.engine.runtime.batch import generate_batch
    from steerchat.engine.runtime.judge import is_looping
    from steerchat.engine.runtime.steered import open_steered

    prompts = sample_prompts(args.data, args.prompts, args.seed)
    rows = []
    for name in args.models:
        steered = open_steered(name, sae=None)  # unsteered: no SAE, no hook
        per_model = {}
        for guard in (False, True):
            t0 = time.perf_counter()
            replies = generate_batch(steered, prompts, SafetySettings(), max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, loop_guard=guard)
            seconds = time.perf_counter() - t0
            figures = [dict(prompt=r.prompt, tokens=r.tokens, looping=is_looping(r.reply),
                            hit_limit=r.tokens >= args.max_new_tokens, loop_stopped=r.loop_stopped, reply=r.reply)
                       for r in replies]
            n = len(figures)
            row = dict(
                model=name, guard="on" if guard else "off", n=n,
                limit_in_loop=sum(f["hit_limit"] and f["looping"] for f in figures) / n,
                hit_limit=sum(f["hit_limit"] for f in figures) / n,
                looping=sum(f["looping"] for f in figures) / n,
                guard_stopped=sum(f["loop_stopped"] for f in figures) / n,
                mean_tokens=sum(f["tokens"] for f in figures) / n,
                seconds=round(seconds, 1),
            )
            rows.append(row)
            per_model["on" if guard else "off"] = dict(summary=row, replies=figures)
            print(json.dumps(row), flush=True)
        out = Path(args.out) / f"loop-guard-{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(settings=vars(args), **per_model), indent=1, ensure_ascii=False))
        del steered

    print()
    print(f"{args.prompts} prompts from {Path(args.data).name} (random.Random({args.seed}).sample), unsteered, "
          f"greedy, max_new_tokens {args.max_new_tokens}, batch size {args.batch_size}")
    print()
    print("| model | loop guard | hit the limit in a loop | hit the limit | looping (is_looping) "
          "| ended by the guard | mean reply tokens | time |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['guard']} | {r['limit_in_loop']:.0%} | {r['hit_limit']:.0%} | {r['looping']:.0%} "
              f"| {r['guard_stopped']:.0%} | {r['mean_tokens']:.1f} | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
