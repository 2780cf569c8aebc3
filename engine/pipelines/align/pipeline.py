"""The whole learn-from-mistakes pipeline over one work folder, stage by stage.

Each stage reads the previous stage's files from the folder and writes its own, so
`steerchat align run` can be stopped anywhere and run again: generation stages skip the
items already written, the dataset is rebuilt from them, and fine-tuning resumes from
its latest checkpoint (or is skipped when the adapter is finished).

    work/
      mistakes.jsonl        stage 1: every induced reply, `kept` where the judge saw no refusal
      collected.jsonl       stage 1: mistakes from files and the chat history
      analyses.jsonl        stage 2: every guided analysis, `kept` where it passed the checks
      good_harmful.jsonl    stage 3: guided replies to the mistakes' instructions (refusals kept)
      good_harmless.jsonl   stage 3: guided replies to ordinary instructions (non-refusals kept)
      dataset/              stage 3: train.jsonl + manifest.json
      adapter/              stage 4: the LoRA adapter, steerchat_adapter.json, checkpoints/
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from steerchat.engine.core.config import Plan
from steerchat.engine.core.datasets import load_prompts
from steerchat.engine.core.jsonl import read_jsonl, write_jsonl
from steerchat.engine.pipelines.align.analyse import analyse_mistakes
from steerchat.engine.pipelines.align.dataset import (
    DATASET_MANIFEST,
    TRAIN_NAME,
    build_dataset,
    good_replies,
    load_good_pairs,
    load_training_rows,
)
from steerchat.engine.pipelines.align.finetune import (
    ADAPTER_MANIFEST,
    FinetuneConfig,
    FinetuneResult,
    finetune,
    latest_checkpoint,
)
from steerchat.engine.pipelines.align.induce import (
    induce_mistakes,
    load_mistakes,
    mistakes_from_history,
)
from steerchat.engine.pipelines.align.records import AlignError, Analysis, Mistake

# (stage name, total items) → a progress callback taking how many items just finished
BarFactory = Callable[[str, int], Callable[[int], None]]


def _instructions(path: str, limit: int | None, seed: int) -> list[str]:
    texts = [p.text for p in load_prompts(path)]
    if limit is not None and limit < len(texts):
        random.Random(seed).shuffle(texts)
        texts = texts[:limit]
    return texts


class Workspace:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mistakes = self.folder / "mistakes.jsonl"
        self.collected = self.folder / "collected.jsonl"
        self.analyses = self.folder / "analyses.jsonl"
        self.good_harmful = self.folder / "good_harmful.jsonl"
        self.good_harmless = self.folder / "good_harmless.jsonl"
        self.dataset = self.folder / "dataset"
        self.adapter = self.folder / "adapter"

    def all_mistakes(self) -> list[Mistake]:
        out = []
        for path in (self.mistakes, self.collected):
            if path.is_file():
                out += load_mistakes(path)
        return out


def stage_induce(steered, ws: Workspace, plan: Plan, bar: BarFactory | None = None) -> dict:
    """Stage 1: induce mistakes and collect the ones from files and the history."""
    summary: dict = {}
    if plan.instructions:
        items = _instructions(plan.instructions, plan.limit, plan.seed)
        kept = induce_mistakes(steered, items, ws.mistakes, max_new_tokens=plan.max_new_tokens,
                               batch_size=plan.batch_size, hint=plan.induce_hint,
                               progress=bar("induce", len(items)) if bar else None)
        summary["induced"] = {"asked": len(items), "kept": len(kept)}
    collected: list[Mistake] = []
    for f in plan.mistake_files:
        collected += load_mistakes(Path(f), source=f"file:{Path(f).name}")
    if plan.history:
        flagged = mistakes_from_history(Path(plan.history))
        summary["history"] = len(flagged)
        collected += flagged
    if plan.mistake_files or plan.history:
        write_jsonl(ws.collected, collected)
        summary["collected"] = len(collected)
    if not plan.instructions and not collected:
        raise AlignError("no mistakes to learn from: give instructions to induce from, a mistakes file or the history")
    return summary


def stage_analyse(steered, ws: Workspace, plan: Plan, bar: BarFactory | None = None) -> list[Analysis]:
    """Stage 2: guided analysis of every mistake in the work folder."""
    mistakes = ws.all_mistakes()
    if not mistakes:
        raise AlignError(f"{ws.folder}: no mistakes yet; run `steerchat align induce` first")
    return analyse_mistakes(steered, mistakes, ws.analyses, max_new_tokens=plan.analysis_tokens,
                            batch_size=plan.batch_size, progress=bar("analyse", len(mistakes)) if bar else None)


def stage_dataset(steered, ws: Workspace, plan: Plan, bar: BarFactory | None = None) -> dict:
    """Stage 3: guided good replies, then train.jsonl and its manifest."""
    if not ws.analyses.is_file():
        raise AlignError(f"{ws.analyses}: no analyses yet; run `steerchat align analyse` first")
    analyses = [Analysis(r["instruction"], r["reply"], r["analysis"], r["source"])
                for r in read_jsonl(ws.analyses, error=AlignError) if r.get("kept")]
    good = []
    if plan.answers:
        harmful = sorted({m.instruction for m in ws.all_mistakes()})
        good += good_replies(steered, harmful, True, ws.good_harmful, max_new_tokens=plan.max_new_tokens,
                             batch_size=plan.batch_size, progress=bar("good (harmful)", len(harmful)) if bar else None)
    if plan.harmless:
        ordinary = _instructions(plan.harmless, plan.ordinary_limit, plan.seed)
        good += good_replies(steered, ordinary, False, ws.good_harmless, max_new_tokens=plan.max_new_tokens,
                             batch_size=plan.batch_size, progress=bar("good (ordinary)", len(ordinary)) if bar else None)
    if plan.good_file:
        good += load_good_pairs(Path(plan.good_file))
    sources = {"instructions": plan.instructions, "mistake_files": plan.mistake_files, "history": plan.history,
               "harmless": plan.harmless, "good_file": plan.good_file, "model": getattr(steered, "model_name", None)}
    return build_dataset(analyses, good, ws.dataset, sources=sources, seed=plan.seed)


def stage_finetune(loaded, data: Path, out: Path, cfg: FinetuneConfig, *, resume: bool | None = None,
                   on_step=None) -> FinetuneResult | None:
    """Stage 4: LoRA fine-tuning. `resume=None` resumes when checkpoints exist; returns
    None when the adapter in `out` is already finished."""
    out = Path(out)
    if (out / ADAPTER_MANIFEST).is_file():
        return None
    rows = load_training_rows(data)
    folder = data if Path(data).is_dir() else Path(data).parent
    info = {"train_file": str(folder / TRAIN_NAME if Path(data).is_dir() else data)}
    if (folder / DATASET_MANIFEST).is_file():
        info["dataset_manifest"] = json.loads((folder / DATASET_MANIFEST).read_text())
    if resume is None:
        resume = latest_checkpoint(out) is not None
    return finetune(loaded, rows, out, cfg, resume=resume, data_info=info, on_step=on_step)
