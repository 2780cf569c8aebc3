"""Stage 2 — guided analysis: the model explains why each mistake is harmful, unethical
or offensive, and only analyses that pass simple quality checks are kept.

The checks are deliberately cheap: an analysis must say something (enough words), must
not refuse the task, must not copy the bad reply (or the request) back, and must not
be a loop of one phrase, which small models fall into.
"""

from __future__ import annotations

import re
from pathlib import Path

from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.pipelines.align.generation import Progress, generate_stage
from steerchat.engine.pipelines.align.prompts import guided_analysis_prompt
from steerchat.engine.pipelines.align.records import Analysis, Mistake, mark_done
from steerchat.engine.runtime.judge import judge_refusal

MIN_WORDS = 8
MAX_COPIED = 0.5  # share of the analysis's word trigrams that may also be in the reply
MIN_DISTINCT = 0.4  # distinct trigrams / trigrams: below this the text is a loop


def _trigrams(text: str) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def copied_share(text: str, source: str) -> float:
    """Share of `text`'s word trigrams that also occur in `source` (1.0: a copy)."""
    grams = _trigrams(text)
    if not grams:
        return 0.0
    pool = set(_trigrams(source))
    return sum(g in pool for g in grams) / len(grams)


def analysis_problem(analysis: str, mistake: Mistake) -> str | None:
    """Why an analysis is unusable ("empty", "refusal", "copy", "loop"), or None when it passes."""
    if len(re.findall(r"\w+", analysis)) < MIN_WORDS:
        return "empty"
    if judge_refusal(analysis).refused:
        return "refusal"
    if copied_share(analysis, mistake.reply) > MAX_COPIED or copied_share(analysis, mistake.instruction) > MAX_COPIED:
        return "copy"
    grams = _trigrams(analysis)
    if len(grams) >= 10 and len(set(grams)) / len(grams) < MIN_DISTINCT:
        return "loop"
    return None


def analyse_mistakes(steered, mistakes: list[Mistake], out_path: Path, *, max_new_tokens: int = 128,
                     batch_size: int = 8, progress: Progress | None = None) -> list[Analysis]:
    """Guided analysis of every mistake; returns the analyses that pass the checks.

    Rows are keyed by (instruction, reply) so two mistakes for one instruction (an
    induced one and a flagged one) are both analysed.
    """
    out_path = Path(out_path)
    items = [{"key": f"{m.instruction}\x00{m.reply}", "instruction": m.instruction, "reply": m.reply,
              "source": m.source} for m in mistakes]

    def judge(item: dict, r) -> dict:
        m = Mistake(item["instruction"], item["reply"], item["source"])
        problem = analysis_problem(r.reply, m)
        return {**item, "analysis": r.reply, "kept": problem is None, "problem": problem}

    rows = generate_stage(steered, items, out_path, lambda it: guided_analysis_prompt(it["instruction"], it["reply"]),
                          SafetySettings(), judge, key="key", max_new_tokens=max_new_tokens,
                          batch_size=batch_size, progress=progress)
    wanted = {it["key"] for it in items}
    rows = [r for r in rows if r["key"] in wanted]
    kept = [Analysis(r["instruction"], r["reply"], r["analysis"], r["source"]) for r in rows if r["kept"]]
    problems: dict[str, int] = {}
    for r in rows:
        if r["problem"]:
            problems[r["problem"]] = problems.get(r["problem"], 0) + 1
    mark_done(out_path, {"analysed": len(rows), "kept": len(kept), "rejected": problems})
    return kept
