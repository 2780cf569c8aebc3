"""`steerchat sae collect` and `steerchat sae train`: the SAE pipeline from activations to a trained SAE.

Only argparse and the engine's torch-free config dataclasses at import time: the flags'
defaults and help come from `CollectConfig` and `TrainConfig`, and the engine (and torch)
is imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from steerchat.cli.checks import (
    CLIError,
    apply_threads_arg,
    device,
    fraction,
    nonneg_float,
    nonneg_int,
    output_folder,
    positive_float,
    positive_int,
    seed,
    threads_arg,
)
from steerchat.engine.core.config import CollectConfig, TrainConfig

# The paper's configuration for Phi-3 Mini (O'Brien et al. 2024): layer 6, 8 x 3072 latents, k=32.
# Estimates, not measured here (no GPU was available when this was written): the SAE with Adam
# state and a 4096-token batch needs about 4-5 GB of GPU memory, the 4-bit model about 2.5 GB;
# activations take 6 KB a token on disk (fp16), so 5M stored tokens are about 31 GB. On one
# H100, generating replies dominates collection (tens of minutes for ~20k instructions at
# 128 new tokens); 30M training tokens are about 7,300 steps, roughly 10-20 minutes.
# --d-sae without a preset: latents per model dimension (TrainConfig.d_sae has no default,
# as it depends on the model's width)
D_SAE_PER_D_IN = 8

PRESETS = {
    "paper-phi3": dict(model="phi-3-mini", layer=6, d_sae=24576, k=32, batch_size=4096, tokens=30_000_000,
                       lr=2e-4, device="cuda", collect_batch_size=64, gen_batch_size=64, shard_tokens=131072),
}


def _add_sources(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sources (each FILE or FILE@START:END, repeatable)")
    g.add_argument("--instructions", action="append", default=[], metavar="FILE",
                   help="prompts the model answers itself (JSON/JSONL/CSV/text)")
    g.add_argument("--pairs", action="append", default=[], metavar="FILE",
                   help="question/answer rows teacher-forced in chat format (e.g. GSM8K JSONL)")
    g.add_argument("--refusals", action="append", default=[], metavar="FILE",
                   help="harmful prompts answered with teacher-forced refusal replies")
    g.add_argument("--prompts", action="append", default=[], metavar="FILE", help="prompts alone, no reply")
    g.add_argument("--texts", action="append", default=[], metavar="FILE", help="plain text files (paragraphs)")
    p.add_argument("--max-new-tokens", type=positive_int, default=CollectConfig.max_new_tokens,
                   help=f"reply length when the model answers ({CollectConfig.max_new_tokens})")
    # None: the preset's value, else the engine's (see _collect_config)
    p.add_argument("--gen-batch-size", type=positive_int, default=None,
                   help=f"prompts per generation batch ({CollectConfig.gen_batch_size})")
    p.add_argument("--collect-batch-size", type=positive_int, default=None,
                   help=f"documents per forward pass ({CollectConfig.batch_size})")
    p.add_argument("--shard-tokens", type=positive_int, default=None,
                   help=f"activations per shard file ({CollectConfig.shard_tokens})")


def register(sub) -> None:
    p = sub.add_parser("sae", help="collect activations and train a sparse autoencoder",
                       description="The SAE pipeline: `collect` hook-layer activations, then `train` a Top-k SAE.")
    sae_sub = p.add_subparsers(dest="sae_command", metavar="SUBCOMMAND", required=True)

    c = sae_sub.add_parser("collect", help="run chat text through the model and store hook-layer activations",
                           description="Store hook-layer activations in chunked shards (resumable: rerun to continue).")
    c.add_argument("--model", "-m", default="smollm2-135m", help="model (default smollm2-135m)")
    c.add_argument("--layer", type=nonneg_int, default=None, help="hook layer (default: the registry's)")
    c.add_argument("--out", required=True, help="folder for the shards and manifest.json")
    c.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_sources(c)
    threads_arg(c)
    c.set_defaults(run=run_collect)

    t = sae_sub.add_parser("train", help="train a Top-k SAE on collected activations",
                           description="Train a Top-k SAE (aux-k loss, unit decoder rows, Adam with warm-up and "
                           "decay) and write an SAELens-layout folder. Resumes from the checkpoint in --out. "
                           "With source flags and an empty --activations folder it collects first. "
                           "On several GPUs (data parallel, gradients all-reduced): "
                           "torchrun --nproc-per-node N -m steerchat sae train ... (collect first, in one process).")
    t.add_argument("--activations", required=True, help="folder written by `steerchat sae collect`")
    t.add_argument("--out", required=True, help="output SAE folder (cfg.json, sae_weights.safetensors)")
    t.add_argument("--preset", choices=sorted(PRESETS), help="paper-phi3: Phi-3 Mini, layer 6, 24576 latents, k=32, batch 4096, 30M tokens, on CUDA "
                   "(about 5 GB of GPU memory for the SAE, 2.5 GB for the 4-bit model; ~31 GB of disk per 5M stored tokens)")
    t.add_argument("--model", "-m", default=None, help="model, for the next-token-loss check (default smollm2-135m)")
    t.add_argument("--layer", type=nonneg_int, default=None)
    # None on the size and schedule flags: the preset's value, else the engine's (see run_train)
    t.add_argument("--d-sae", type=positive_int, default=None, help=f"number of latents (default {D_SAE_PER_D_IN} x d_in)")
    t.add_argument("--k", type=positive_int, default=None, help=f"active latents per token (default {TrainConfig.k})")
    t.add_argument("--tokens", type=positive_int, default=None, help=f"training tokens (default {TrainConfig.tokens:,})")
    t.add_argument("--batch-size", type=positive_int, default=None, help=f"tokens per step (default {TrainConfig.batch_size})")
    t.add_argument("--lr", type=positive_float, default=None, help=f"peak learning rate (default {TrainConfig.lr:g})")
    t.add_argument("--warmup", type=nonneg_int, default=TrainConfig.warmup, help="warm-up steps (default 5%% of steps)")
    t.add_argument("--aux-k", type=positive_int, default=TrainConfig.aux_k, help="latents in the aux-k loss (default d_in/2)")
    t.add_argument("--aux-coef", type=nonneg_float, default=TrainConfig.aux_coef,
                   help=f"weight of the aux-k loss ({TrainConfig.aux_coef:g})")
    t.add_argument("--dead-tokens", type=positive_int, default=None,
                   help=f"a latent idle this many tokens is dead (default {TrainConfig.dead_tokens:,})")
    t.add_argument("--holdout", type=fraction, default=TrainConfig.holdout,
                   help=f"fraction of shards held out for evaluation ({TrainConfig.holdout:g})")
    t.add_argument("--checkpoint-every", type=positive_int, default=TrainConfig.checkpoint_every,
                   help=f"steps between checkpoints ({TrainConfig.checkpoint_every})")
    t.add_argument("--eval-docs", type=nonneg_int, default=64, help="held-out documents for the next-token-loss check (0: skip)")
    t.add_argument("--device", type=device, default=None, help="auto, cpu, cuda, cuda:N or mps")
    t.add_argument("--seed", type=seed, default=TrainConfig.seed)
    t.add_argument("--save-dtype", choices=("float16", "float32"), default="float16")
    _add_sources(t)
    threads_arg(t)
    t.set_defaults(run=run_train)


def _sources(args) -> list:
    from steerchat.engine.pipelines.activations import Source

    out = []
    for kind in ("instructions", "pairs", "refusals", "prompts", "texts"):
        out += [Source.parse(kind, spec) for spec in getattr(args, kind)]
    return out


def _collect_config(args, model: str, layer: int | None, preset: dict) -> CollectConfig:
    """The collection settings: flags first, then the preset's, then the engine's defaults."""
    from steerchat.models import get_entry

    if layer is None:
        entry = get_entry(model)
        if entry is None:
            raise CLIError(f"{model} is not in the registry; give --layer")
        layer = entry.hook_layer
    kw = dict(max_new_tokens=args.max_new_tokens)
    # flag (and preset key) → CollectConfig field; the flag says which batch it sizes
    for name, field in (("gen_batch_size", "gen_batch_size"), ("collect_batch_size", "batch_size"),
                        ("shard_tokens", "shard_tokens")):
        kw[field] = getattr(args, name) or preset.get(name, getattr(CollectConfig, field))
    return CollectConfig(model=model, hook_layer=layer, sources=_sources(args), **kw)


def _check_sources(cfg: CollectConfig) -> None:
    """Read every source now (its slice must hold something), before a model is loaded."""
    from steerchat.engine.pipelines.activations import read_pairs, read_paragraphs, read_prompts

    readers = {"pairs": read_pairs, "texts": read_paragraphs}
    for src in cfg.sources:
        items = readers.get(src.kind, read_prompts)(src.path)[src.start : src.end]
        if not items:
            raise CLIError(f"--{src.kind} {src.path}: holds nothing to collect"
                           + (f" in the slice {src.start}:{src.end}" if (src.start, src.end) != (0, None) else ""))


def checked_collect(cfg: CollectConfig, out, device: str):
    """`collect`, after the sources are read and the hook layer is checked against the model."""
    from pathlib import Path

    from steerchat.engine.core.api import EngineError
    from steerchat.engine.pipelines.activations import MANIFEST, Manifest, collect
    from steerchat.engine.runtime.loading import load_model

    if (Path(out) / MANIFEST).is_file() and Manifest.load(Path(out)).complete:
        return collect(cfg, out, device=device)  # finished: it checks the settings and returns
    _check_sources(cfg)
    loaded = load_model(cfg.model, device=device)
    if cfg.hook_layer >= loaded.num_layers:
        raise EngineError(f"--layer {cfg.hook_layer}: {loaded.name} has {loaded.num_layers} decoder layers "
                          f"(0 to {loaded.num_layers - 1})")
    return collect(cfg, out, loaded=loaded, device=device)


def _check_sae_size(tc: TrainConfig, d_in: int, device: str) -> None:
    """k fits d_sae, and the SAE with its Adam state fits the memory it will train in."""
    import os

    from steerchat.engine.core.api import EngineError

    if tc.k > tc.d_sae:
        raise EngineError(f"--k {tc.k}: more active latents than the SAE has (--d-sae {tc.d_sae})")
    need = 16 * 2 * d_in * tc.d_sae  # W_enc and W_dec in float32, with gradients and two Adam moments
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        index = int(device.partition(":")[2] or 0)
        have, where = torch.cuda.get_device_properties(index).total_memory, "the GPU has"
    else:
        have, where = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine has"
    if need > have:
        raise EngineError(f"--d-sae {tc.d_sae:,}: an SAE of {tc.d_sae:,} x {d_in} latents needs about "
                          f"{need / 2**30:,.1f} GiB to train and {where} {have / 2**30:,.1f} GiB; choose a smaller --d-sae")


def run_collect(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (imported here, never at module level)

    from steerchat.engine.core.api import EngineError

    apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
    try:
        cfg = _collect_config(args, args.model, args.layer, {})
        if not cfg.sources:
            print("steerchat: give at least one source (--instructions, --pairs, --refusals, --prompts, --texts)",
                  file=sys.stderr)
            return 2
        output_folder(args.out, "--out")
        t0 = time.perf_counter()
        m = checked_collect(cfg, args.out, args.device)
    except EngineError as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    print(f"{m.tokens:,} activations from {m.docs_total:,} documents in {len(m.shards)} shards "
          f"({time.perf_counter() - t0:.0f} s); excluded {m.excluded}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from steerchat.cli.features import command_line
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.pipelines.activations import MANIFEST, Manifest
    from steerchat.engine.pipelines.sae_train import train

    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    model = args.model or preset.get("model", "smollm2-135m")
    device = args.device or preset.get("device", "auto")
    apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
    try:
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise EngineError("training on cuda (as --preset paper-phi3 does) needs a CUDA GPU, and none is visible")
        act = Path(args.activations)
        manifest = Manifest.load(act) if (act / MANIFEST).is_file() else None
        if os.environ.get("WORLD_SIZE", "1") != "1" and (manifest is None or not manifest.complete):
            raise EngineError(f"{act}: under torchrun the activations must already be collected; run "
                              "`steerchat sae collect` (one process) first")
        if manifest is None or not manifest.complete:
            output_folder(act, "--activations")
            output_folder(args.out, "--out")
            cfg = _collect_config(args, model, args.layer if args.layer is not None else preset.get("layer"), preset)
            if not cfg.sources and manifest is None:
                raise EngineError(f"{act / MANIFEST}: missing; collect first, or pass source flags to collect now")
            manifest = checked_collect(cfg, act, device)
        d_in = manifest.d_in
        tc = TrainConfig(
            d_sae=args.d_sae or preset.get("d_sae", D_SAE_PER_D_IN * d_in), k=args.k or preset.get("k", TrainConfig.k),
            tokens=args.tokens or preset.get("tokens", TrainConfig.tokens),
            batch_size=args.batch_size or preset.get("batch_size", TrainConfig.batch_size),
            lr=args.lr or preset.get("lr", TrainConfig.lr), warmup=args.warmup, aux_k=args.aux_k, aux_coef=args.aux_coef,
            dead_tokens=args.dead_tokens or TrainConfig.dead_tokens, holdout=args.holdout,
            checkpoint_every=args.checkpoint_every, seed=args.seed,
        )
        output_folder(args.out, "--out")
        _check_sae_size(tc, d_in, device)
        report = train(tc, act, args.out, device=device, model=model if args.eval_docs else None,
                       eval_docs=args.eval_docs, save_dtype=args.save_dtype, command=command_line(args, "sae", "train"))
    except EngineError as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 writes and reports
        return 0
    for key, value in report.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:>22}: {value}")
    print(f"wrote {args.out} (report in training.json)")
    return 0
