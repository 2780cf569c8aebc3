"""Does a weight format keep what steerchat measured? Weight formats side by side, paired.

For each format the model is opened as the chat opens it, and every prompt is sent through a
real chat turn (`Session.send`: greedy, the shipped SAE hook, the loop guard) at each level
asked for. Printed per format and level: unsafe and safe prompts refused (the project's judge),
how many replies are word for word the first format's, and how many verdicts agree with it;
per format: the SAE's explained variance and L0 on the hook layer's residuals over the same
chat-formatted prompts, and decoding tokens/s (the formats alternate prompt by prompt, so a
change in the machine's load hits both alike).

    python bench/format_check.py --model qwen2.5-coder-0.5b [--formats bfloat16,int8,float32] \
        [--levels Off,Max] [--n 20] [--json out.json]

Formats: float32 or bfloat16 (dense weights in that dtype), int8 (`--quant int8`: int8 weights
over bfloat16 activations, as the chat loads them). The first is the reference.

Prompts: the held-out splits of the project's gate data (mild harmful requests, and benign ones
that sound harmful); neither chose the weight format or anything else.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def prompts(n: int) -> list[tuple[str, str]]:
    """(kind, prompt): up to n held-out harmful ('unsafe') and n benign-but-scary ('safe') ones."""
    from steerchat.engine.pipelines.harm_gate import GATE_DATA, read_split

    out = []
    for kind, name in (("unsafe", "mild_harmful"), ("safe", "benign_scary")):
        out += [(kind, p) for p in read_split(GATE_DATA / f"{name}.jsonl", "heldout")[:n]]
    return out


@torch.no_grad()
def sae_quality(steered, texts: list[str]) -> dict:
    """Explained variance and L0 of the SAE on the hook layer's output over `texts` (chat-formatted
    user turns; the first position, an attention sink, is left out)."""
    from steerchat.engine.runtime.layers import run_to_layer

    sae, layer = steered.sae, steered.sae.cfg.hook_layer
    seen = []
    for t in texts:
        ids = steered.loaded.tokenizer(steered.render([{"role": "user", "content": t}]), return_tensors="pt",
                                       add_special_tokens=False).input_ids
        seen.append(run_to_layer(steered.loaded.model, layer, ids)[0, 1:].float())
    x = torch.cat(seen)
    f = sae.encode(x.to(sae.W_dec.dtype)).float()
    x_hat = sae.decode(f.to(sae.W_dec.dtype)).float()
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return {"explained_variance": round(1 - float(fvu), 4), "l0": round(float((f > 0).sum(-1).float().mean()), 1),
            "tokens": x.shape[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--formats", default="bfloat16,int8")
    ap.add_argument("--levels", default="Off,Max")
    ap.add_argument("--n", type=int, default=20, help="prompts of each kind")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from steerchat.engine.runtime.session import Session
    from steerchat.engine.runtime.steered import open_steered

    formats = {f: open_steered(args.model, quant="int8", single_stream=True) if f == "int8"
               else open_steered(args.model, quant="none", dtype=f) for f in args.formats.split(",")}
    reference = next(iter(formats))
    for name, s in formats.items():
        print(f"{name}: {s.loaded.dtype}, quant {s.loaded.quant}")
    items = prompts(args.n)
    levels = [lv.strip() for lv in args.levels.split(",")]
    replies: dict[tuple[str, str], list] = {(f, lv): [] for f in formats for lv in levels}
    speed: dict[str, list[float]] = {f: [] for f in formats}
    for kind, text in items:
        for lv in levels:
            for f, steered in formats.items():  # alternating, prompt by prompt
                session = Session(steered, lv)
                session.sampling.max_new_tokens = args.max_tokens
                t = time.perf_counter()
                trace = session.send(text)
                if trace.timings.reply_tokens:
                    speed[f].append(trace.timings.reply_tokens / (time.perf_counter() - t))
                replies[(f, lv)].append((kind, trace.reply, bool(trace.verdict and trace.verdict.refused)))
    report: dict = {"model": args.model, "prompts": len(items), "levels": {}, "formats": {}}
    print(f"\n{args.model}: {len(items)} held-out prompts, {args.max_tokens}-token greedy chat turns")
    print(f"{'format':9} {'level':7} {'unsafe refused':15} {'safe refused':13} {'same reply':11} {'same verdict':12}")
    for lv in levels:
        dense = replies[(reference, lv)]
        for f in formats:
            rows = replies[(f, lv)]
            unsafe = [r for k, _, r in rows if k == "unsafe"]
            safe = [r for k, _, r in rows if k == "safe"]
            same = sum(a[1] == b[1] for a, b in zip(rows, dense))
            agree = sum(a[2] == b[2] for a, b in zip(rows, dense))
            fig = {"unsafe_refused": sum(unsafe) / max(1, len(unsafe)), "safe_refused": sum(safe) / max(1, len(safe)),
                   "same_reply": same / len(rows), "same_verdict": agree / len(rows)}
            report["levels"][f"{f} {lv}"] = fig
            print(f"{f:9} {lv:7} {sum(unsafe):3}/{len(unsafe):<11} {sum(safe):3}/{len(safe):<9} "
                  f"{same:3}/{len(rows):<7} {agree:3}/{len(rows)}")
    texts = [t for _, t in items]
    for f, steered in formats.items():
        q = sae_quality(steered, texts)
        q["decode_tok_s"] = round(statistics.median(speed[f]), 2) if speed[f] else None
        report["formats"][f] = q
        print(f"{f}: SAE explained variance {q['explained_variance']:.3f}, L0 {q['l0']} over {q['tokens']} tokens; "
              f"median decode {q['decode_tok_s']} tok/s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
