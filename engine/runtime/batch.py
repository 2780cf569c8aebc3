"""Batches of token sequences, and batched greedy generation under the steering hook.

`pad_batch` is the one way sequences are padded into a batch: left padding when every
row must end at the same position (generation, next-token logits), right padding when
positions must match the unpadded sequence (activations, teacher-forced scoring).

`generate_batch` renders prompts with the chat template and left-pads them, so every
row's reply starts at the same position. The harm gate reads each row's own user tokens;
a conditional clamp applies only to the rows whose gate opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from steerchat.engine.core.levels import SafetySettings
from transformers import StoppingCriteria, StoppingCriteriaList
from steerchat.engine.core.trace import Verdict
from steerchat.engine.runtime.judge import is_explicit_decline, judge_refusal, opening_log_odds
from steerchat.engine.runtime.loopguard import LoopGuard, end_ids
from steerchat.engine.runtime.steered import History, SteeredModel


def pad_id(tokenizer) -> int:
    """The id to pad with: the tokenizer's pad token, else its end-of-sequence token."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token to pad with")


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # (B, W)
    attention_mask: torch.Tensor  # (B, W), 1 on real tokens
    masks: list[torch.Tensor]  # each extra per-token mask, padded with False/0 like the ids
    lengths: list[int]
    side: str

    def offset(self, row: int) -> int:
        """Where row `row`'s first real token sits."""
        return self.input_ids.shape[1] - self.lengths[row] if self.side == "left" else 0


def pad_batch(seqs: Sequence[Sequence[int] | torch.Tensor], pad: int, side: str, device,
              masks: Sequence[Sequence[Sequence[bool] | torch.Tensor]] = ()) -> PaddedBatch:
    """Pad token sequences (and any per-token masks that go with them) to one width."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    lengths = [int(r.numel()) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    attn = torch.zeros_like(ids)
    padded_masks = []
    for m in masks:
        column = [torch.as_tensor(x).reshape(-1) for x in m]
        padded_masks.append(torch.zeros((len(rows), width), dtype=column[0].dtype if column else torch.bool,
                                        device=device))
    for i, (row, n) in enumerate(zip(rows, lengths)):
        span = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, span] = row.to(device)
        attn[i, span] = 1
        for m, out in zip(masks, padded_masks):
            out[i, span] = torch.as_tensor(m[i]).reshape(-1).to(device, out.dtype)
    return PaddedBatch(ids, attn, padded_masks, lengths, side)


# A steered reply never repeats a 4-gram (measured on the starter: loops 25% -> 0% of 24 replies at s=1.5)
STEERED_NO_REPEAT_NGRAM = 4


class RefusalStop(StoppingCriteria):
    """A stopping criterion: a row is done once its reply so far is an explicit decline whose
    last sentence is complete ("I can't help with that."), so a steered refusal ends instead
    of repeating itself. Per-row, as `generate()` takes it; checked only every few tokens."""

    def __init__(self, tokenizer, width: int, every: int = 2, rows: Callable[[], torch.Tensor | None] | None = None):
        super().__init__()
        self.tokenizer, self.width, self.every = tokenizer, width, every
        self.rows = rows  # which rows are being steered (None from it: none); no callback: all rows

    def __call__(self, input_ids, scores, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        n = input_ids.shape[1] - self.width
        if n < 4 or n % self.every:
            return done
        rows = self.rows() if self.rows is not None else torch.ones_like(done)
        if rows is None or not bool(rows.any()):
            return done
        for row, text in enumerate(self.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)):
            t = text.rstrip()
            if bool(rows[row]) and t.endswith((".", "!")) and is_explicit_decline(t):
                done[row] = True
        return done


class SteeredNoRepeat:
    """`no_repeat_ngram_size` for the rows being steered only, so an unsteered reply (a
    gate-closed prompt, say) decodes exactly as it would without the guard."""

    def __init__(self, n: int, rows: Callable[[], torch.Tensor | None]):
        from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

        self.inner, self.rows = NoRepeatNGramLogitsProcessor(n), rows

    def __call__(self, input_ids, scores):
        rows = self.rows()
        if rows is None or not bool(rows.any()):
            return scores
        guarded = self.inner(input_ids, scores.clone())
        return torch.where(rows.to(scores.device)[:, None], guarded, scores)


@dataclass
class BatchReply:
    prompt: str
    reply: str
    verdict: Verdict
    gate_score: float | None = None
    gate_open: bool | None = None
    tokens: int = 0  # reply tokens generated (max_new_tokens: it ran to the limit)
    loop_stopped: bool = False  # the loop guard ended it


def generate_batch(
    steered: SteeredModel,
    prompts: list[str],
    settings: SafetySettings,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    history: History | None = None,
    on_batch: Callable[[list[BatchReply]], None] | None = None,
    histories: list[History] | None = None,
    stop_on_refusal: bool = False,
    no_repeat_ngram: int | None = None,
    loop_guard: bool = False,
) -> list[BatchReply]:
    """Greedy replies to `prompts` (each a fresh turn after `history`) under `settings`.

    `loop_guard` ends any row (steered or not) caught repeating itself, as the chat does
    (`engine.runtime.loopguard`); off by default, so evaluation numbers stay comparable.

    `histories`, when given, holds one conversation per prompt (multi-turn evaluation
    batches rows that each carry their own earlier turns); it overrides `history`.
    """
    if histories is not None and len(histories) != len(prompts):
        raise ValueError(f"{len(histories)} histories for {len(prompts)} prompts")
    convs = [list(h) for h in histories] if histories is not None else [list(history or [])] * len(prompts)
    tok, model = steered.loaded.tokenizer, steered.loaded.model
    control = steered.control_for(settings)
    pad = pad_id(tok)
    out: list[BatchReply] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        preps = [steered.prepare(list(h), p, settings) for h, p in zip(convs[start : start + batch_size], chunk)]
        batch = pad_batch([p.input_ids[0] for p in preps], pad, "left", steered.loaded.device,
                          masks=[[p.user_mask[0] for p in preps]])
        first_logits: list[torch.Tensor] = []

        def keep_first(input_ids, scores):
            if not first_logits:
                first_logits.append(scores.detach().float().cpu())
            return scores

        box: dict = {}

        def rows():  # the rows the hook clamped on its last pass; all rows when there is no hook
            h = box.get("hook")
            return h.steered_rows if h is not None else None

        processors = [keep_first] + ([SteeredNoRepeat(no_repeat_ngram, rows)] if no_repeat_ngram else [])
        width = batch.input_ids.shape[1]
        ends = end_ids(tok, pad, model)
        stops = StoppingCriteriaList([RefusalStop(tok, width, rows=rows)] if stop_on_refusal else [])
        guard = LoopGuard(width, ends) if loop_guard else None
        if guard is not None:
            stops.append(guard)
        with torch.inference_mode(), steered.steering(control, batch.masks[0], record=False) as hook:
            box["hook"] = hook
            gen = model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                logits_processor=processors, **({"stopping_criteria": stops} if len(stops) else {}),
            )
        replies = tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        ended = torch.isin(gen[:, width:], torch.tensor(ends, device=gen.device))
        done = []
        for row, (prompt, reply) in enumerate(zip(chunk, replies)):
            lo = opening_log_odds(first_logits[0][row], tok) if first_logits else None
            gate_score = gate_open = None
            if hook is not None and hook.gate_scores is not None:
                gate_score, gate_open = float(hook.gate_scores[row]), bool(hook.gate_open[row])
            kept = (~ended[row]).nonzero()  # the reply without the end of sequence and padding after it
            n_tokens = int(kept[-1]) + 1 if len(kept) else 0
            if guard is not None and row in guard.stopped:
                n_tokens = guard.stopped[row]
            done.append(BatchReply(prompt, reply.strip(), judge_refusal(reply, lo), gate_score, gate_open,
                                   tokens=n_tokens, loop_stopped=guard is not None and row in guard.stopped))
        out.extend(done)
        if on_batch is not None:
            on_batch(done)
    return out
