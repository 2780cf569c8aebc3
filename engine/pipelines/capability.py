"""Capability under steering: multiple choice by answer log-likelihood, maths by exact match.

The paper's capability cost (MMLU 68.8 → 36.0, GSM8K 82.5 → 35.6) is what conditional
steering has to avoid, so both measures run under the same steering hook and settings
as the chat itself:

- **Multiple choice.** The question goes in the user message (``style="cloze"``, the
  default, as lm-evaluation-harness scores MMLU's "acc"; ``"listed"`` adds the lettered
  options); each option's text is then teacher-forced as the assistant's reply and scored
  by the summed (or, with `length_norm`, mean) log-probability of its tokens. The
  highest-scoring option is the model's answer. No generation, one forward pass per batch
  of (question, option) sequences. On SmolLM2-135M's built-in set, cloze + sum scored
  54%, cloze + mean 45%, listed + sum 30% (chance 25%), so cloze + sum is the default.
- **Maths.** Greedy generation, then the final number of the reply (`extract_final_number`)
  against the number after ``####``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from steerchat.engine.core.datasets import MathProblem, MCQuestion, extract_final_number
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.runtime.batch import (
    BatchReply,
    PaddedBatch,
    generate_batch,
    pad_batch,
    pad_id,
)
from steerchat.engine.runtime.steered import SteeredModel

MATH_INSTRUCTION = "Solve the problem step by step, then give the final answer as a number after '####'."


@dataclass
class MCResult:
    """One scored question: the option scores, the model's pick and whether it was right."""

    scores: list[float]
    predicted: int
    answer: int
    gate_score: float | None = None
    gate_open: bool | None = None

    @property
    def correct(self) -> bool:
        return self.predicted == self.answer


@dataclass
class MathResult:
    reply: str
    predicted: str | None
    target: str
    gate_score: float | None = None
    gate_open: bool | None = None

    @property
    def correct(self) -> bool:
        return self.predicted is not None and self.predicted == self.target


def mc_prompt(q: MCQuestion, style: str = "cloze") -> str:
    """The user message for a multiple-choice question: the question alone ("cloze"), or
    with its lettered options ("listed")."""
    if style == "cloze":
        return q.question
    options = "\n".join(f"{'ABCDEFGHIJ'[i]}. {c}" for i, c in enumerate(q.choices))
    return f"{q.question}\n\n{options}\n\nReply with the correct option."


def math_prompt(p: MathProblem) -> str:
    return f"{p.question}\n\n{MATH_INSTRUCTION}"


def _forward_logprobs(steered: SteeredModel, settings: SafetySettings, batch: PaddedBatch
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Log-softmax over the vocabulary at every position, under the steering hook, and the
    gate's per-row scores and decisions (None without a gate)."""
    model = steered.loaded.model
    with torch.inference_mode(), steered.steering(steered.control_for(settings), batch.masks[0], record=False) as hook:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    if hook is None:
        return logp, None, None
    return logp, hook.gate_scores, hook.gate_open


def score_multiple_choice(
    steered: SteeredModel, questions: list[MCQuestion], settings: SafetySettings, batch_size: int = 16,
    length_norm: bool = False, style: str = "cloze", on_done: Callable[[int, MCResult], None] | None = None,
) -> list[MCResult]:
    """Score every option of every question by its log-likelihood as the assistant's reply.

    `length_norm` averages over the option's tokens instead of summing, so long options
    are not penalised for their length. Sequences are right-padded and batched across
    questions; `on_done(index, result)` is called as each question completes.
    """
    tok, device = steered.loaded.tokenizer, steered.loaded.device
    seqs: list[tuple[int, int, list[int], list[bool], int]] = []  # (question, option, ids, user mask, prefix length)
    for qi, q in enumerate(questions):
        prep = steered.prepare([], mc_prompt(q, style), settings)
        prefix = prep.input_ids[0].tolist()
        mask = prep.user_mask[0].tolist()
        for ci, choice in enumerate(q.choices):
            option = tok.encode(choice, add_special_tokens=False) or [tok.eos_token_id]
            seqs.append((qi, ci, prefix + option, mask + [False] * len(option), len(prefix)))

    scores: list[list[float | None]] = [[None] * len(q.choices) for q in questions]
    gates: list[tuple[float | None, bool | None]] = [(None, None)] * len(questions)
    remaining = [len(q.choices) for q in questions]
    out: list[MCResult | None] = [None] * len(questions)
    pad = pad_id(tok)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        # right padding: option tokens stay aligned with their prefix
        batch = pad_batch([c[2] for c in chunk], pad, "right", device, masks=[[c[3] for c in chunk]])
        logp, gate_scores, gate_open = _forward_logprobs(steered, settings, batch)
        for row, (qi, ci, seq, _, n_prefix) in enumerate(chunk):
            targets = torch.tensor(seq[n_prefix:], device=device)
            # the token at position t is predicted by the logits at t - 1
            lp = logp[row, n_prefix - 1 : len(seq) - 1].gather(-1, targets[:, None]).squeeze(-1)
            scores[qi][ci] = float(lp.mean() if length_norm else lp.sum())
            if gate_scores is not None:
                gates[qi] = (float(gate_scores[row]), bool(gate_open[row]))
            remaining[qi] -= 1
            if remaining[qi] == 0:
                s = [float(x) for x in scores[qi]]
                res = MCResult(s, max(range(len(s)), key=s.__getitem__), questions[qi].answer, *gates[qi])
                out[qi] = res
                if on_done is not None:
                    on_done(qi, res)
    return [r for r in out if r is not None]


def solve_math(
    steered: SteeredModel, problems: list[MathProblem], settings: SafetySettings, max_new_tokens: int = 128,
    batch_size: int = 8, on_batch: Callable[[list[BatchReply]], None] | None = None,
) -> list[MathResult]:
    """Greedy answers to maths problems, each scored by exact match of its final number."""
    replies = generate_batch(steered, [math_prompt(p) for p in problems], settings,
                             max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch)
    return [
        MathResult(r.reply, extract_final_number(r.reply), p.target, r.gate_score, r.gate_open)
        for p, r in zip(problems, replies)
    ]


def accuracy(results: list[MCResult] | list[MathResult]) -> float | None:
    """Share of results that are correct; None for no results."""
    return sum(r.correct for r in results) / len(results) if results else None
