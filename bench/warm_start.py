"""Warm start: seconds from launching `steerchat ask` to its first streamed token.

"Warm" means the model's converted cache already exists (the first run of a model converts it
and is not counted: one warm-up run per model comes first). The models are started in
alternating rounds, so a change in the machine's load hits each alike; the median and the
spread are printed.

    python bench/warm_start.py [--models qwen2.5-coder-0.5b,smollm2-135m] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def first_token_s(model: str, prompt: str) -> float:
    """Launch `steerchat ask` and time the first byte of the reply on stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "steerchat", "ask", prompt, "--model", model, "--level", "Off",
                             "--max-tokens", "8"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - t0
    proc.stdout.read()
    if proc.wait() != 0 or not first:
        raise SystemExit(f"{model}: `steerchat ask` failed (run it by hand to see why)")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2.5-coder-0.5b,smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", default="What is the capital of Australia?")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        first_token_s(m, args.prompt)  # warm-up: the converted cache exists afterwards
    runs: dict[str, list[float]] = {m: [] for m in models}
    for _ in range(args.rounds):
        for m in models:
            runs[m].append(first_token_s(m, args.prompt))
    print(f"launch → first streamed token, {args.rounds} alternating rounds (warm cache):")
    out = {}
    for m in models:
        v = runs[m]
        out[m] = {"median_s": statistics.median(v), "runs": v}
        print(f"  {m:20} median {statistics.median(v):5.2f} s  (min {min(v):.2f}, max {max(v):.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
