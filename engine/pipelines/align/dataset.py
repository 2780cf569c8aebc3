"""Stage 3 — the fine-tuning set, built as the method prescribes, with every hint removed.

Three kinds of row, all plain user → assistant turns with no system prompt:

- ``analysis``: the *unguided* analysis prompt (request + bad reply, asking whether the
  reply is good, without saying it is harmful) → the model's guided analysis;
- ``answer``: a harmful instruction → the model's own guided reply that the judge
  counts as a refusal (the guidance hint was in the system prompt when it was
  generated and is absent here);
- ``ordinary``: a harmless instruction → a good reply, from the model's guided
  generations (kept when the judge says it did not refuse) or from a file.

Any row whose input still carries a hint phrase (a reply that parroted the red-team
hint, say) is dropped and counted, so no hint reaches a training input.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

from steerchat.engine.core.datasets import load_pairs
from steerchat.engine.core.jsonl import read_jsonl, write_jsonl
from steerchat.engine.core.paths import file_sha256
from steerchat.engine.core.levels import DEFAULT_LEVELS, GuidanceMode, SafetySettings
from steerchat.engine.pipelines.align.analyse import analysis_problem
from steerchat.engine.pipelines.align.generation import Progress, generate_stage
from steerchat.engine.pipelines.align.prompts import (
    HINT_PHRASES,
    contains_hint,
    unguided_analysis_prompt,
)
from steerchat.engine.pipelines.align.records import (
    AlignError,
    Analysis,
    GoodReply,
    Mistake,
    TrainingRow,
    mark_done,
)

TRAIN_NAME = "train.jsonl"
DATASET_MANIFEST = "manifest.json"


def guided_settings() -> SafetySettings:
    """The chat's guided generation: the guidance hint, no steering."""
    level = next(lv for lv in DEFAULT_LEVELS if lv.guidance is GuidanceMode.HINT and lv.strength == 0)
    return SafetySettings(level=level)


def good_replies(steered, instructions: list[str], harmful: bool, out_path: Path, *, max_new_tokens: int = 96,
                 batch_size: int = 8, progress: Progress | None = None) -> list[GoodReply]:
    """The model's guided replies that the judge accepts: refusals for harmful
    instructions; for harmless ones, non-refusals that pass the same cheap checks as an
    analysis (not empty, not the instruction echoed back, not a loop)."""
    out_path = Path(out_path)

    def judge(item: dict, r) -> dict:
        if harmful:
            keep = r.verdict.refused
        else:
            keep = not r.verdict.refused and analysis_problem(r.reply, Mistake(item["instruction"], "", "")) is None
        return {"instruction": item["instruction"], "reply": r.reply, "harmful": harmful, "kept": bool(keep),
                "source": "guided", "refusal_score": r.verdict.score}

    rows = generate_stage(steered, [{"instruction": i} for i in instructions], out_path, lambda it: it["instruction"],
                          guided_settings(), judge, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          progress=progress)
    wanted = set(instructions)
    rows = [r for r in rows if r["instruction"] in wanted]
    kept = [GoodReply(r["instruction"], r["reply"], r["harmful"], r["source"]) for r in rows if r["kept"]]
    mark_done(out_path, {"generated": len(rows), "kept": len(kept), "harmful": harmful})
    return kept


def load_good_pairs(path: Path) -> list[GoodReply]:
    """Ordinary (instruction, good reply) pairs from a JSONL file (reply/response/output)."""
    name = Path(path).name
    return [GoodReply(p.prompt, p.reply, bool(p.row.get("harmful", False)), p.row.get("source") or f"file:{name}")
            for p in load_pairs(path, error=AlignError)]


def training_rows(analyses: list[Analysis], good: list[GoodReply]) -> tuple[list[TrainingRow], Counter]:
    """The training rows, and how many were dropped for carrying a hint into the input."""
    rows: list[TrainingRow] = []
    dropped: Counter = Counter()
    for a in analyses:
        rows.append(TrainingRow("analysis", unguided_analysis_prompt(a.instruction, a.reply), a.analysis, a.source))
    for g in good:
        rows.append(TrainingRow("answer" if g.harmful else "ordinary", g.instruction, g.reply, g.source))
    clean = []
    for r in rows:
        if contains_hint(r.prompt):
            dropped[r.kind] += 1
        else:
            clean.append(r)
    return clean, dropped


def build_dataset(analyses: list[Analysis], good: list[GoodReply], out_dir: Path, *, sources: dict | None = None,
                  seed: int = 0) -> dict:
    """Write `train.jsonl` (shuffled with `seed`) and `manifest.json`; returns the manifest."""
    out_dir = Path(out_dir)
    rows, dropped = training_rows(analyses, good)
    if not rows:
        raise AlignError("the fine-tuning set would be empty: no analyses and no good replies survived the checks")
    random.Random(seed).shuffle(rows)
    train = out_dir / TRAIN_NAME
    write_jsonl(train, rows)
    counts = Counter(r.kind for r in rows)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "method": "mistake analysis (Chen et al., arXiv 2310.10477): unguided analysis + guided answers, hints removed",
        "rows": len(rows),
        "counts": {k: counts.get(k, 0) for k in ("analysis", "answer", "ordinary")},
        "sources": dict(Counter(r.source.split(":")[0] for r in rows)),
        "dropped_for_hint_words": dict(dropped),
        "hint_phrases_checked": list(HINT_PHRASES),
        "inputs": sources or {},
        "seed": seed,
        "train_file": TRAIN_NAME,
        "train_sha256": file_sha256(train),
    }
    (out_dir / DATASET_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def load_training_rows(path: Path) -> list[TrainingRow]:
    """Rows of a `train.jsonl` (a folder holding one is accepted too)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAIN_NAME
    rows = read_jsonl(path, required=("prompt", "reply"), error=AlignError)
    return [TrainingRow(r.get("kind", "ordinary"), r["prompt"], r["reply"], r.get("source", ""), r.get("meta", {}))
            for r in rows]
