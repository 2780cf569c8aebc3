"""Stage 1 — mistakes: induced with the red-team hint, read from a JSONL file, or taken
from the replies a user flagged as bad in the chat history.

Induced replies are kept only when the refusal judge says the model went along with the
request: a refusal is not a mistake to learn from.
"""

from __future__ import annotations

from pathlib import Path

from steerchat.engine.core.datasets import load_pairs
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.pipelines.align.generation import Progress, generate_stage
from steerchat.engine.pipelines.align.prompts import induce_prompt
from steerchat.engine.pipelines.align.records import AlignError, Mistake, mark_done

from steerchat.store import Store, StoreError


def induce_mistakes(steered, instructions: list[str], out_path: Path, *, max_new_tokens: int = 96,
                    batch_size: int = 8, hint: bool = True, progress: Progress | None = None) -> list[Mistake]:
    """Ask the model each instruction with the red-team hint (or plainly: `hint=False`); keep
    the non-refusals.

    Every generation is written to `out_path` (with `kept` and the judge's score) so the
    stage resumes where it stopped; the kept ones are returned as Mistakes.
    """
    out_path = Path(out_path)

    def judge(item: dict, r) -> dict:
        keep = bool(r.reply.strip()) and not r.verdict.refused
        return {"instruction": item["instruction"], "reply": r.reply, "source": "induced" if hint else "asked",
                "kept": keep, "refusal_score": r.verdict.score}

    rows = generate_stage(steered, [{"instruction": i} for i in instructions], out_path,
                          lambda it: induce_prompt(it["instruction"], hint), SafetySettings(), judge,
                          max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    wanted = set(instructions)
    rows = [r for r in rows if r["instruction"] in wanted]
    kept = [Mistake(r["instruction"], r["reply"], r["source"]) for r in rows if r.get("kept")]
    mark_done(out_path, {"generated": len(rows), "kept": len(kept), "refused": len(rows) - len(kept)})
    return kept


def load_mistakes(path: Path, source: str | None = None) -> list[Mistake]:
    """Mistakes from a JSONL of {instruction, reply} (also prompt/response/output/bad_reply).

    A stage-1 file is read too: its rows marked `kept: false` are skipped.
    """
    name = Path(path).name
    return [Mistake(p.prompt, p.reply, source or p.row.get("source") or f"file:{name}")
            for p in load_pairs(path, error=AlignError)]


def mistakes_from_history(db_path: Path) -> list[Mistake]:
    """Replies flagged as bad in the chat history, each with the user message it answered.

    Opens the database read-only, so a running chat is not disturbed; a flagged reply
    with no user message before it, or with empty text, is skipped.
    """
    try:
        store = Store.open_existing(db_path)
        try:
            flagged = store.flagged_mistakes()
        finally:
            store.close()
    except StoreError as exc:
        raise AlignError(f"no chat history to learn from: {exc}") from None
    return [Mistake(f.user_text, f.reply, f"history:chat{f.chat_id}/message{f.message_id}")
            for f in flagged if f.user_text.strip() and f.reply.strip()]
