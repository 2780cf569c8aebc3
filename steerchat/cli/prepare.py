"""`steerchat prepare MODEL`: make any model steerable in one resumable command."""

from __future__ import annotations

import argparse
import sys

from steerchat.cli.checks import apply_threads_arg, device, nonneg_int, positive_float, positive_int, seed, threads_arg


def register(sub) -> None:
    p = sub.add_parser(
        "prepare", help="make a model steerable: download, SAE, refusal features, labels, gate, levels (resumable)",
        description="Take a registered model, a Hugging Face id or a local folder from nothing to steerable: "
        "download it, get an SAE (the registry's published one, else collect activations and train one), find "
        "refusal features, label features, fit the harm gate and calibrate the safety levels. Each stage is "
        "recorded in prepare.json in the output folder; running the command again skips finished stages and "
        "resumes an interrupted one. The result lives under the user data folder, so `steerchat --model NAME` "
        "finds it. --plan prints the stages with estimated time, disk and memory first.")
    p.add_argument("model", help="registry name, Hugging Face id or model folder")
    p.add_argument("--plan", action="store_true", help="print the stages with estimates and stop")
    p.add_argument("--out", help="output folder (default: <data>/models/<name>)")
    p.add_argument("--layer", type=nonneg_int, help="hook layer (default: the registry's, else 40%% of the way up)")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--disk-gb", type=positive_float, default=2.0,
                   help="bound on the stored activations in GB (default 2; tokens x (2 d_in + 12) bytes)")
    p.add_argument("--train-tokens", type=positive_int, default=2_000_000, help="SAE training tokens (default 2M)")
    p.add_argument("--d-sae", type=positive_int, help="SAE latents (default 8 x d_in)")
    p.add_argument("--k", type=positive_int, default=32, help="active latents per token (default 32)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="SAE training tokens per step (default 1024)")
    p.add_argument("--prompts", type=positive_int, help="at most this many prompts from each built-in list")
    p.add_argument("--eval-limit", type=positive_int, default=40, help="prompts per set in the calibration sweep")
    p.add_argument("--no-published", action="store_true", help="train an SAE even where a published one exists")
    p.add_argument("--seed", type=seed, default=0)
    threads_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.pipelines.prepare import PrepareConfig, format_plan, plan, prepare

    cfg = PrepareConfig(model=args.model, out=args.out, layer=args.layer, device=args.device, disk_gb=args.disk_gb,
                        train_tokens=args.train_tokens, d_sae=args.d_sae, k=args.k, batch_size=args.batch_size,
                        prompts=args.prompts, eval_limit=args.eval_limit, published=not args.no_published,
                        seed=args.seed)
    try:
        print(format_plan(cfg, plan(cfg)))
        if args.plan:
            return 0
        apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
        prepare(cfg, say=lambda line: print(line, file=sys.stderr, flush=True))
    except EngineError as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    return 0
