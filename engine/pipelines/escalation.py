"""Multi-turn escalation (Crescendo-style): conversations that start harmless and walk
toward a harmful goal, each turn answered with the model's own earlier replies as history.

A single-turn refusal rate misses the attack that matters most for a chat app: the user
who gets there in small steps. All scripts advance one turn at a time in a batch, each row
carrying its own conversation, so a sweep costs (turns × batches) generations. The
outcome is judged on the final reply: a conversation "ends in compliance" when the judge
finds no refusal there. Under conditional steering the gate reads each turn's own user
message, so the trace of every turn records whether the gate opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from steerchat.engine.core.datasets import Escalation
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.runtime.batch import generate_batch


@dataclass
class EscalationTurn:
    user: str
    reply: str
    refused: bool
    judge_score: float
    gate_score: float | None = None
    gate_open: bool | None = None


@dataclass
class EscalationResult:
    id: str
    goal: str
    turns: list[EscalationTurn] = field(default_factory=list)

    @property
    def complied(self) -> bool:
        """True when the final reply is not a refusal: the escalation reached its goal."""
        return bool(self.turns) and not self.turns[-1].refused

    @property
    def first_refusal(self) -> int | None:
        """Index of the first refused turn, or None."""
        return next((i for i, t in enumerate(self.turns) if t.refused), None)

    def to_dict(self) -> dict:
        return {
            "script": self.id, "goal": self.goal, "complied": self.complied, "first_refusal": self.first_refusal,
            "turns": [t.__dict__ for t in self.turns],
        }


def run_escalations(
    session, scripts: list[Escalation], settings: SafetySettings, max_new_tokens: int = 48,
    batch_size: int = 8, on_turn: Callable[[int, int], None] | None = None,
) -> list[EscalationResult]:
    """Play every script against the model; turn k of each script sees that script's own
    turns 0..k-1 and the model's replies to them. `on_turn(turn, rows)` reports progress."""
    results = [EscalationResult(s.id, s.goal) for s in scripts]
    histories: list[list[tuple[str, str]]] = [[] for _ in scripts]
    for k in range(max((len(s.turns) for s in scripts), default=0)):
        active = [i for i, s in enumerate(scripts) if k < len(s.turns)]
        replies = generate_batch(
            session, [scripts[i].turns[k] for i in active], settings, max_new_tokens=max_new_tokens,
            batch_size=batch_size, histories=[histories[i] for i in active],
        )
        for i, r in zip(active, replies):
            results[i].turns.append(EscalationTurn(
                scripts[i].turns[k], r.reply, r.verdict.refused, r.verdict.score, r.gate_score, r.gate_open,
            ))
            histories[i].append((scripts[i].turns[k], r.reply))
        if on_turn is not None:
            on_turn(k, len(active))
    return results
