"""A fake engine for the TUI tests: behaves like `engine.session.Session` without torch.

It streams canned replies word by word with a small delay, checks `cancel` and reads
`settings` before every token (recording the level each token was made under), and
returns TurnTraces shaped like the real ones: prompt/reply features with labels, token
features for heat maps, refusal features with natural activation and clamp target, a
judge verdict and a gate decision. A reply caught repeating itself ends as the loop guard
ends a real one (`engine.core.loops`), unless `sampling.loop_guard` is off. `FakeEngine.open_session` mimics the loader: it
reports download/convert/quantise progress and raises ModelNotAvailable for models it
is told are missing.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from steerchat.engine.core.api import LoadProgress, ModelNotAvailable, SamplingSettings
from steerchat.engine.core.loops import caught_in_loop
from steerchat.engine.core.levels import GuidanceMode, LevelScale, SafetySettings, guidance_text
from steerchat.engine.core.trace import (
    FeatureStat,
    GateDecision,
    RefusalFeatureState,
    Timings,
    TokenFeatures,
    TurnTrace,
    Verdict,
)

HARM_FEATURE = 4021
REFUSAL_FEATURE = 22373
LABELS = {
    HARM_FEATURE: "weapons and explosives",
    REFUSAL_FEATURE: "refusal phrasing",
    310: "cooking and recipes",
    77: "start of an answer",
    9: "punctuation",
}
HARM_WORDS = ("bomb", "explosive", "poison")
REFUSAL_TEXT = "I can't help with that. Making a bomb could hurt people, so I won't give instructions."
COMPLY_TEXT = "Sure, here is **an answer** to your question.\n\n- first point\n- second point"
REFERENCE_ACTIVATION = 8.0


def split_words(text: str) -> list[str]:
    """Word-sized pieces that join back to `text` exactly (the fake tokenizer)."""
    return re.findall(r"\s*\S+|\s+", text) or [text]


@dataclass
class FakeSession:
    model_name: str = "fake-model"
    sae_name: str | None = "fake-sae"
    adapter_name: str | None = None
    levels: LevelScale = field(default_factory=LevelScale)
    settings: SafetySettings = field(default_factory=SafetySettings)
    system_prompt: str | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    delay: float = 0.002
    replies: dict[str, str] = field(default_factory=dict)  # prompt -> exact reply text
    hold_at: int | None = None  # before this reply token, wait for `release`
    release: threading.Event = field(default_factory=threading.Event)
    reached: threading.Event = field(default_factory=threading.Event)
    fail_with: str | None = None  # break off the next reply with this error
    history: list[tuple[str, str]] = field(default_factory=list)
    token_levels: list[list[str]] = field(default_factory=list)  # per call: level of each token
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, prompt)
    timings: Timings | None = None  # when set, every trace reports these (fixed figures for snapshots)

    def _reply_text(self, prompt: str, settings: SafetySettings) -> str:
        if prompt in self.replies:
            return self.replies[prompt]
        harmful = any(w in prompt.lower() for w in HARM_WORDS)
        return REFUSAL_TEXT if harmful and settings.strength > 0 else COMPLY_TEXT

    def _turn(self, prompt, on_token, cancel, settings_of) -> TurnTrace:
        start = time.perf_counter()
        first = settings_of()
        pieces = split_words(self._reply_text(prompt, first))
        written: list[str] = []
        used: list[str] = []
        changes: list[tuple[int, str]] = []
        stopped, error, looped = False, None, False
        for i, piece in enumerate(pieces):
            if self.hold_at is not None and i == self.hold_at:
                self.reached.set()
                self.release.wait(10)
            if cancel is not None and cancel.is_set():
                stopped = True
                break
            if self.fail_with and i == 2:
                error, self.fail_with = self.fail_with, None
                break
            level = settings_of().level.name  # read every step, as the real engine does
            if used and level != used[-1]:
                changes.append((i, level))
            used.append(level)
            written.append(piece)
            if on_token:
                on_token(piece)
            time.sleep(self.delay)
            # the loop guard, as the real engine applies it (one word is one token here)
            if self.sampling.loop_guard and caught_in_loop(written):
                looped = True
                break
        self.token_levels.append(used)
        reply = "".join(written)
        trace = self._trace(prompt, reply, first, changes, stopped, error, time.perf_counter() - start)
        trace.loop_stopped = looped
        return trace

    def _trace(self, prompt, reply, settings, changes, stopped, error, total) -> TurnTrace:
        level = settings.level
        harmful = any(w in prompt.lower() for w in HARM_WORDS)
        tokens: list[TokenFeatures] = []
        for i, word in enumerate(split_words(prompt)):
            feats = [(77, 1.0 + i % 3)]
            if any(w in word.lower() for w in HARM_WORDS):
                feats.insert(0, (HARM_FEATURE, 9.5))
            tokens.append(TokenFeatures(i, word, "prompt", feats))
        n = len(tokens)
        refusing = reply.startswith("I can't")
        for i, word in enumerate(split_words(reply) if reply else []):
            feats = [(310, 2.0)] if not refusing else [(REFUSAL_FEATURE, 7.0 - min(i, 6))]
            tokens.append(TokenFeatures(n + i, word, "reply", feats))
        prompt_stats = [FeatureStat(77, 3.0, 2.0, n, LABELS[77])]
        if harmful:
            prompt_stats.insert(0, FeatureStat(HARM_FEATURE, 9.5, 9.5, 1, LABELS[HARM_FEATURE]))
        reply_stats = [
            FeatureStat(REFUSAL_FEATURE, 7.0, 4.5, 6, LABELS[REFUSAL_FEATURE])
            if refusing
            else FeatureStat(310, 2.0, 2.0, len(tokens) - n, LABELS[310]),
            FeatureStat(9, 1.2, 0.8, 3, LABELS[9]),
        ]
        gate_open = harmful
        steering = level.strength > 0 and (gate_open or not level.conditional)
        return TurnTrace(
            prompt=prompt,
            reply=reply,
            level=level.name,
            guidance_mode=level.guidance.value,
            guidance_text=guidance_text(level.guidance) if level.guidance != GuidanceMode.NONE else None,
            strength=level.strength,
            conditional=level.conditional,
            model=self.model_name,
            sae=self.sae_name,
            hook_layer=6,
            stopped=stopped,
            error=error,
            level_changes=changes,
            tokens=tokens,
            prompt_features=prompt_stats,
            reply_features=reply_stats,
            refusal_features=[
                RefusalFeatureState(
                    REFUSAL_FEATURE,
                    REFERENCE_ACTIVATION,
                    natural_prompt_max=0.4 if harmful else 0.0,
                    natural_reply_max=1.1 if refusing else 0.0,
                    natural_reply_mean=0.6 if refusing else 0.0,
                    target=level.strength * REFERENCE_ACTIVATION if steering else None,
                    label=LABELS[REFUSAL_FEATURE],
                )
            ],
            verdict=Verdict(
                refused=refusing,
                score=0.93 if refusing else 0.04,
                evidence=["reply opens with \"I can't\""] if refusing else ["no refusal phrase found"],
                phrase="I can't" if refusing else None,
                opening_log_odds=2.7 if refusing else -3.1,
            ),
            gate=GateDecision(
                score=0.91 if harmful else 0.05,
                threshold=0.5,
                open=gate_open,
                top_tokens=[(w.strip(), 9.5) for w in split_words(prompt) if any(h in w.lower() for h in HARM_WORDS)],
            ),
            timings=(Timings(**vars(self.timings)) if self.timings is not None
                     else Timings(total_s=total, prompt_tokens=n, reply_tokens=len(tokens) - n)),
            seed=self.sampling.seed,
        )

    def send(self, text, on_token=None, cancel=None) -> TurnTrace:
        self.calls.append(("send", text))
        trace = self._turn(text, on_token, cancel, lambda: self.settings)
        self.history.append((text, trace.reply))
        return trace

    def regenerate(self, on_token=None, cancel=None) -> TurnTrace:
        prompt, _ = self.history.pop()
        self.calls.append(("regenerate", prompt))
        trace = self._turn(prompt, on_token, cancel, lambda: self.settings)
        self.history.append((prompt, trace.reply))
        return trace

    def rerun(self, turn_index, settings, on_token=None, cancel=None) -> TurnTrace:
        prompt = self.history[turn_index][0]
        self.calls.append(("rerun", prompt))
        return self._turn(prompt, on_token, cancel, lambda: settings)

    def set_history(self, turns) -> None:
        self.history = list(turns)

    def clear(self) -> None:
        self.history = []


@dataclass
class FakeEngine:
    """Stands in for `engine.session.open_session`; pass `engine.open_session` to the app."""

    missing: tuple[str, ...] = ()  # model names that raise ModelNotAvailable
    load_delay: float = 0.0  # seconds spread over the progress steps
    session_kw: dict = field(default_factory=dict)
    opened: list[dict] = field(default_factory=list)
    sessions: list[FakeSession] = field(default_factory=list)

    def open_session(self, model="phi-3-mini", *, sae="auto", adapter=None, level=None, system=None,
                     quant="auto", sampling=None, progress=None) -> FakeSession:
        self.opened.append(dict(model=model, sae=sae, adapter=adapter, level=level, system=system, quant=quant))
        steps = [
            LoadProgress("download", "model.safetensors", 0, 100),
            LoadProgress("download", "model.safetensors", 60, 100),
            LoadProgress("download", "model.safetensors", 100, 100),
            LoadProgress("convert", "converting weights", 1, 1),
            LoadProgress("quantise", "quantising to 4-bit", 1, 1),
            LoadProgress("sae", "loading SAE", 1, 1),
        ]
        if model in self.missing:
            if progress:
                progress(LoadProgress("download", "checking the Hugging Face cache", 0, None))
            raise ModelNotAvailable(f"{model} is not downloaded and the machine is offline.")
        for step in steps:
            if progress:
                progress(step)
            time.sleep(self.load_delay / len(steps))
        levels = LevelScale()
        session = FakeSession(
            model_name=model,
            levels=levels,
            settings=SafetySettings(levels.get(level) if level else levels.levels[0]),
            system_prompt=system,
            sampling=sampling or SamplingSettings(),
            **{"adapter_name": adapter.rstrip("/").split("/")[-1] if adapter else None, **self.session_kw},
        )
        if progress:
            progress(LoadProgress("ready", "ready", 1, 1))
        self.sessions.append(session)
        return session
