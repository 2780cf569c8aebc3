"""Batched greedy generation under the steering hook, for sweeps, evaluation and data collection.

Prompts are rendered with the session's chat template and left-padded, so every row's
reply starts at the same position. The harm gate reads each row's own user tokens; a
conditional clamp applies only to the rows whose gate opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.runtime.judge import judge_refusal, opening_log_odds
from steerchat.engine.runtime.steering import ClampRequest
from steerchat.engine.core.trace import Verdict


@dataclass
class BatchReply:
    prompt: str
    reply: str
    verdict: Verdict
    gate_score: float | None = None
    gate_open: bool | None = None


def generate_batch(
    session,
    prompts: list[str],
    settings: SafetySettings,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    history: list[tuple[str, str]] | None = None,
    on_batch: Callable[[list[BatchReply]], None] | None = None,
    histories: list[list[tuple[str, str]]] | None = None,
) -> list[BatchReply]:
    """Greedy replies to `prompts` (each a fresh turn after `history`) under `settings`.

    `histories`, when given, holds one conversation per prompt (multi-turn evaluation
    batches rows that each carry their own earlier turns); it overrides `history`.
    """
    if histories is not None and len(histories) != len(prompts):
        raise ValueError(f"{len(histories)} histories for {len(prompts)} prompts")
    rows = [list(h) for h in histories] if histories is not None else [list(history or [])] * len(prompts)
    tok, model = session.loaded.tokenizer, session.loaded.model
    device = session.loaded.device
    hook = session.hook
    out: list[BatchReply] = []
    pad_id = tok.pad_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        preps = [session.prepare(list(h), p, settings) for h, p in zip(rows[start : start + batch_size], chunk)]
        width = max(p.input_ids.shape[1] for p in preps)
        ids = torch.full((len(preps), width), pad_id, dtype=torch.long, device=device)
        attn = torch.zeros_like(ids)
        user_mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, p in enumerate(preps):
            n = p.input_ids.shape[1]
            ids[row, width - n :] = p.input_ids[0]
            attn[row, width - n :] = 1
            user_mask[row, width - n :] = p.user_mask[0]

        def control() -> ClampRequest:
            if settings.strength <= 0 or not session._refusal:
                return ClampRequest(None)
            conditional = settings.level.conditional and hook is not None and hook.gate is not None
            return ClampRequest(session._reference * settings.strength, conditional)

        first_logits: list[torch.Tensor] = []

        def keep_first(input_ids, scores):
            if not first_logits:
                first_logits.append(scores.detach().float().cpu())
            return scores

        kwargs = dict(
            input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, pad_token_id=pad_id, logits_processor=[keep_first],
        )
        with torch.inference_mode():
            if hook is not None:
                hook.reset()
                hook.control, hook.prompt_mask, hook.record = control, user_mask, False
                try:
                    with hook.applied(model):
                        gen = model.generate(**kwargs)
                finally:
                    hook.record = True
            else:
                gen = model.generate(**kwargs)
        replies = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        batch = []
        for row, (prompt, reply) in enumerate(zip(chunk, replies)):
            lo = opening_log_odds(first_logits[0][row], tok) if first_logits else None
            gate_score = gate_open = None
            if hook is not None and hook.gate_scores is not None:
                gate_score, gate_open = float(hook.gate_scores[row]), bool(hook.gate_open[row])
            batch.append(BatchReply(prompt, reply.strip(), judge_refusal(reply, lo), gate_score, gate_open))
        out.extend(batch)
        if on_batch is not None:
            on_batch(batch)
    return out
