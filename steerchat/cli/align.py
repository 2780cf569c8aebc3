"""`steerchat align`: learn from mistakes (Chen et al.) — induce harmful replies, have the
model analyse them, build a hint-free fine-tuning set and train a LoRA adapter on it.

    steerchat align induce   --instructions harmful.json [--mistakes bad.jsonl] [--history]
    steerchat align analyse
    steerchat align dataset  --harmless alpaca.json [--good pairs.jsonl]
    steerchat align finetune [--steps 200 --rank 8 --resume]
    steerchat align run      (all four, resumable)

Every stage reads and writes the same work folder (--work). Chat with the result:
`steerchat --adapter WORK/adapter`. Parsing here needs argparse and the engine's torch-free
`Plan` and `FinetuneConfig` only (the flags' defaults and help come from them); the engine
(and torch) is imported when a stage runs.
"""

from __future__ import annotations

import argparse
import sys

from steerchat.cli.checks import (
    apply_threads_arg,
    fraction,
    nonneg_int,
    output_folder,
    positive_float,
    positive_int,
    seed,
    threads_arg,
)
from steerchat.engine.core.config import FinetuneConfig, Plan

ALIGN_STAGES = ("induce", "analyse", "dataset", "finetune", "run")


def register(sub) -> None:
    p = sub.add_parser("align", help="learn from mistakes: induce, analyse, build a dataset, LoRA fine-tune",
                       description=__doc__.split("\n\n")[0].replace("\n", " "))
    stages = p.add_subparsers(dest="align_stage", metavar="STAGE", required=True)
    helps = {
        "induce": "generate replies with a red-team hint and keep the non-refusals; collect mistakes from files/history",
        "analyse": "have the model explain why each mistake is harmful; keep analyses that pass the checks",
        "dataset": "build train.jsonl (hints removed): analyses, guided answers and ordinary pairs",
        "finetune": "LoRA fine-tuning on the dataset (progress, checkpoints, --resume)",
        "run": "every stage in order, skipping what the work folder already holds",
    }
    for name in ALIGN_STAGES:
        s = stages.add_parser(name, help=helps[name], description=helps[name])
        _common(s)
        if name in ("induce", "run"):
            _induce_args(s)
        if name in ("analyse", "run"):
            s.add_argument("--analysis-tokens", type=positive_int, default=Plan.analysis_tokens,
                           help=f"longest analysis in tokens (default {Plan.analysis_tokens})")
        if name in ("dataset", "run"):
            _dataset_args(s)
        if name in ("finetune", "run"):
            _finetune_args(s, standalone=name == "finetune")
        s.set_defaults(run=run)


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", "-m", default=None, help="chat model (default: from config.toml, else the starter)")
    s.add_argument("--quant", choices=("auto", "4bit", "8bit", "none"), default="auto",
                   help="base quantisation (auto: 4-bit NF4 on CUDA where the registry says so → QLoRA)")
    s.add_argument("--work", default=None, help="work folder (default ./steerchat-align/<model>)")
    s.add_argument("--batch-size", type=positive_int, default=Plan.batch_size,
                   help=f"prompts generated together (default {Plan.batch_size})")
    s.add_argument("--max-new-tokens", type=positive_int, default=Plan.max_new_tokens,
                   help=f"longest generated reply (default {Plan.max_new_tokens})")
    s.add_argument("--seed", type=seed, default=Plan.seed, help="seed for choosing items and shuffling (decoding is greedy)")
    threads_arg(s)


def _induce_args(s) -> None:
    s.add_argument("--instructions", help="harmful instructions to induce mistakes from (JSON/JSONL/CSV/text)")
    s.add_argument("--limit", type=positive_int, default=Plan.limit, help="use N instructions (a seeded sample)")
    s.add_argument("--induce", choices=("red-team", "plain"), default="red-team" if Plan.induce_hint else "plain",
                   help="how instructions are asked: with the red-team hint (default), or plainly, for a "
                   "safety-tuned model that refuses the hint itself but answers some bare requests")
    s.add_argument("--mistakes", action="append", default=[], metavar="JSONL",
                   help="mistakes collected elsewhere: JSONL of {instruction, reply}; repeatable")
    s.add_argument("--history", nargs="?", const="default", default=Plan.history, metavar="DB",
                   help="also use replies flagged as bad in the chat history (default: steerchat's own)")


def _dataset_args(s) -> None:
    s.add_argument("--harmless", help="ordinary instructions; the model's guided replies become good pairs")
    s.add_argument("--ordinary-limit", type=positive_int, default=Plan.ordinary_limit,
                   help=f"use N ordinary instructions (default {Plan.ordinary_limit})")
    s.add_argument("--good", help="ordinary (instruction, reply) pairs from a JSONL file")
    s.add_argument("--no-answers", action="store_true",
                   help="leave out harmful instruction → guided refusal pairs")


def _finetune_args(s, standalone: bool) -> None:
    if standalone:
        s.add_argument("--data", default=None, help="train.jsonl or its folder (default WORK/dataset)")
        s.add_argument("--out", default=None, help="adapter folder (default WORK/adapter)")
        s.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    ft = FinetuneConfig
    s.add_argument("--steps", type=positive_int, default=ft.steps, help=f"optimizer steps (default {ft.steps})")
    s.add_argument("--train-batch-size", type=positive_int, default=ft.batch_size,
                   help=f"rows per micro-batch (default {ft.batch_size})")
    s.add_argument("--grad-accum", type=positive_int, default=ft.grad_accum,
                   help=f"micro-batches per optimizer step (default {ft.grad_accum})")
    s.add_argument("--lr", type=positive_float, default=ft.lr, help=f"peak learning rate (default {ft.lr:g})")
    s.add_argument("--warmup", type=nonneg_int, default=ft.warmup_steps, help=f"warm-up steps (default {ft.warmup_steps})")
    s.add_argument("--schedule", choices=("linear", "cosine"), default=ft.schedule, help="decay after warm-up")
    s.add_argument("--rank", type=positive_int, default=ft.rank, help=f"LoRA rank (default {ft.rank})")
    s.add_argument("--alpha", type=positive_int, default=ft.alpha, help=f"LoRA alpha (default {ft.alpha})")
    s.add_argument("--dropout", type=fraction, default=ft.dropout, help=f"LoRA dropout (default {ft.dropout:g})")
    s.add_argument("--max-seq-len", type=positive_int, default=ft.max_seq_len,
                   help=f"longest training sequence in tokens (default {ft.max_seq_len})")
    s.add_argument("--save-every", type=positive_int, default=ft.save_every, help=f"checkpoint every N steps (default {ft.save_every})")


def run(args: argparse.Namespace) -> int:
    from steerchat.engine.core.api import EngineError

    try:
        return _run(args)
    except EngineError as exc:
        print(f"steerchat: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsteerchat: align stopped; run the same command again to resume", file=sys.stderr)
        return 130


def _bar_factory():
    from tqdm import tqdm

    def make(desc: str, total: int):
        bar = tqdm(total=total, desc=desc, unit="item", file=sys.stderr)
        done = {"n": 0}

        def update(n: int) -> None:
            bar.update(n)
            done["n"] += n
            if done["n"] >= total:
                bar.close()

        return update

    return make


def _read_inputs(args, plan: Plan, stage: str) -> None:
    """Read the given input files before the model loads, so a bad one is reported at once."""
    from pathlib import Path

    from steerchat.engine.pipelines.align.dataset import load_training_rows
    from steerchat.engine.pipelines.align.induce import load_mistakes

    if stage in ("induce", "run"):
        for f in plan.mistake_files:
            load_mistakes(Path(f))
    if stage == "finetune" and getattr(args, "data", None):
        load_training_rows(Path(args.data))


def _run(args) -> int:
    from pathlib import Path

    from steerchat.engine.pipelines.align.pipeline import (
        Workspace,
        stage_analyse,
        stage_dataset,
        stage_finetune,
        stage_induce,
    )
    from steerchat.engine.runtime.steered import open_steered
    from steerchat.tui.config import load_config

    config, warning = load_config()
    if warning:
        print(f"steerchat: {warning}", file=sys.stderr)
    model = args.model or config.model or "smollm2-135m"
    stage = args.align_stage
    work = output_folder(Path(args.work) if args.work else Path("steerchat-align") / Path(model).name, "--work")
    if getattr(args, "out", None):
        output_folder(args.out, "--out")
    ws = Workspace(work)
    history = getattr(args, "history", None)
    if history == "default":
        from steerchat.engine.core.paths import get_paths

        history = str(get_paths().history_db)
    # a stage without a flag (e.g. `finetune` has no --limit) gets the Plan's default
    plan = Plan(
        instructions=getattr(args, "instructions", Plan.instructions), limit=getattr(args, "limit", Plan.limit),
        induce_hint=getattr(args, "induce", "red-team" if Plan.induce_hint else "plain") == "red-team",
        mistake_files=getattr(args, "mistakes", []), history=history, harmless=getattr(args, "harmless", Plan.harmless),
        ordinary_limit=getattr(args, "ordinary_limit", Plan.ordinary_limit), good_file=getattr(args, "good", Plan.good_file),
        answers=not getattr(args, "no_answers", not Plan.answers), max_new_tokens=args.max_new_tokens,
        analysis_tokens=getattr(args, "analysis_tokens", Plan.analysis_tokens), batch_size=args.batch_size, seed=args.seed,
    )
    if stage in ("induce", "run") and not (plan.instructions or plan.mistake_files or plan.history):
        print("steerchat: align: give --instructions, --mistakes or --history", file=sys.stderr)
        return 2
    apply_threads_arg(args)  # default: the cores idle now (a busy core would stall every step)
    _read_inputs(args, plan, stage)
    print(f"steerchat align: loading {model}", file=sys.stderr)
    # Plain model: mistakes and analyses come from the model as it is, without the SAE.
    steered = open_steered(model, sae="none", quant=args.quant)
    bars = _bar_factory()
    if stage in ("induce", "run"):
        s = stage_induce(steered, ws, plan, bars)
        print(f"induce: {s} → {ws.mistakes}", file=sys.stderr)
    if stage in ("analyse", "run"):
        kept = stage_analyse(steered, ws, plan, bars)
        print(f"analyse: {len(kept)} analyses kept → {ws.analyses}", file=sys.stderr)
    if stage in ("dataset", "run"):
        m = stage_dataset(steered, ws, plan, bars)
        print(f"dataset: {m['rows']} rows {m['counts']}, dropped for hint words {m['dropped_for_hint_words']} "
              f"→ {ws.dataset}", file=sys.stderr)
    if stage in ("finetune", "run"):
        cfg = FinetuneConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout, lr=args.lr,
                             warmup_steps=args.warmup, schedule=args.schedule, steps=args.steps,
                             batch_size=args.train_batch_size, grad_accum=args.grad_accum,
                             max_seq_len=args.max_seq_len, save_every=args.save_every, seed=args.seed)
        data = Path(getattr(args, "data", None) or ws.dataset)
        out = Path(getattr(args, "out", None) or ws.adapter)
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="finetune", unit="step", file=sys.stderr)

        def on_step(step, loss, lr):
            bar.n = step
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}")

        resume = True if getattr(args, "resume", False) else (None if stage == "run" else False)
        result = stage_finetune(steered.loaded, data, out, cfg, resume=resume, on_step=on_step)
        bar.close()
        if result is None:
            print(f"finetune: {out} is already finished", file=sys.stderr)
        else:
            print(f"finetune: {result.steps} steps, final loss {result.final_loss:.3f}, "
                  f"{result.seconds:.0f} s → {out}", file=sys.stderr)
        print(f"chat with it: steerchat --model {model} --adapter {out}")
    return 0
