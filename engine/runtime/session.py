"""A chat session: history, the chat template, streaming generation under the steering hook,
and a TurnTrace at the end of every turn.

`Session.send()` runs in the caller's thread (the UI calls it from a worker), streams
text pieces through `on_token`, stops within one token when `cancel` is set, and reads
`self.settings` at every decoding step so a slider move applies to the next token.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch
from steerchat.engine.core.api import (
    EngineError,
    ProgressCallback,
    SamplingSettings,
    TokenCallback,
    model_sampling_defaults,
    resolve_sampling,
)
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.core.trace import TurnTrace
from steerchat.engine.runtime.batch import STEERED_NO_REPEAT_NGRAM, RefusalStop, SteeredNoRepeat
from steerchat.engine.runtime.judge import judge_refusal, opening_log_odds
from steerchat.engine.runtime.loopguard import LoopGuard, end_ids
from steerchat.engine.runtime.steered import History, SteeredModel, open_steered
from steerchat.engine.runtime.steering import ClampRequest
from steerchat.engine.runtime.threads import apply_threads
from steerchat.engine.runtime.tracebuild import build_trace_features
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer


# enough of a reply's opening for the judge to tell a refusal ("I'm sorry, but I can't …")
UNSTEERED_OPENING_TOKENS = 12


class _Cancel(StoppingCriteria):
    def __init__(self, event: threading.Event | None):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        stop = self.event is not None and self.event.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _FirstLogits(LogitsProcessor):
    """Keeps the next-token logits of the first reply position, for the judge's log-odds."""

    def __init__(self):
        self.first: torch.Tensor | None = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = scores[0].detach().float().cpu()
        return scores


class _Streamer(BaseStreamer):
    """Decodes the reply incrementally and hands new text to the callback, in this thread."""

    def __init__(self, tokenizer, on_token: TokenCallback | None):
        self.tokenizer = tokenizer
        self.on_token = on_token
        self.ids: list[int] = []
        self.text = ""
        self.first_token_at: float | None = None
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        piece, self.text = text[len(self.text):], text
        if piece and self.on_token is not None:
            self.on_token(piece)

    def end(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        piece, self.text = text[len(self.text):], text
        if piece and self.on_token is not None:
            self.on_token(piece)


class Session:
    """One conversation with a loaded model, optionally read and steered through an SAE."""

    def __init__(self, steered: SteeredModel, level: str | None = None, system_prompt: str | None = None,
                 sampling: SamplingSettings | None = None):
        self.steered = steered
        self.model_name = steered.model_name
        self.sae_name = steered.sae_name
        self.adapter_name = steered.adapter_name
        self.levels = steered.levels
        self.settings = SafetySettings(level=self.levels.get(level) if level else self.levels.default)
        self.system_prompt = system_prompt
        self.sampling = sampling or SamplingSettings()  # the user's; None fields: the model's own
        # what the model's own generation config asks for, read once (a GGUF starter's: nothing)
        self.model_sampling = model_sampling_defaults(getattr(steered.loaded.model, "generation_config", None))
        self.history: History = []
        self.threads: int | None = None  # CPU threads for torch; None: the idle cores, chosen each turn
        self._busy = threading.Lock()

    # ---- the ChatSession protocol ----

    def send(self, text: str, on_token: TokenCallback | None = None,
             cancel: threading.Event | None = None) -> TurnTrace:
        trace = self._run(list(self.history), text, lambda: self.settings, on_token, cancel)
        self.history.append((text, trace.reply))
        return trace

    def regenerate(self, on_token: TokenCallback | None = None,
                   cancel: threading.Event | None = None) -> TurnTrace:
        if not self.history:
            raise EngineError("There is no reply to regenerate yet.")
        user, _ = self.history.pop()
        try:
            trace = self._run(list(self.history), user, lambda: self.settings, on_token, cancel)
        except BaseException:
            self.history.append((user, _))
            raise
        self.history.append((user, trace.reply))
        return trace

    def rerun(self, turn_index: int, settings: SafetySettings, on_token: TokenCallback | None = None,
              cancel: threading.Event | None = None) -> TurnTrace:
        if not 0 <= turn_index < len(self.history):
            raise EngineError(f"There is no turn {turn_index} in this chat.")
        user = self.history[turn_index][0]
        return self._run(list(self.history[:turn_index]), user, lambda: settings, on_token, cancel)

    def set_history(self, turns: list[tuple[str, str]]) -> None:
        self.history = [(str(u), str(a)) for u, a in turns]

    def clear(self) -> None:
        self.history = []

    def decoding(self) -> SamplingSettings:
        """The sampling the next turn uses: the user's settings over the model's own over
        steerchat's (greedy)."""
        return resolve_sampling(self.sampling, self.model_sampling)

    # ---- one generation ----

    def _run(self, history: list[tuple[str, str]], user_text: str, get_settings: Callable[[], SafetySettings],
             on_token: TokenCallback | None, cancel: threading.Event | None) -> TurnTrace:
        if not self._busy.acquire(blocking=False):
            raise EngineError("A reply is already being generated; wait for it or cancel it.")
        try:
            return self._generate(history, user_text, get_settings, on_token, cancel)
        finally:
            self._busy.release()

    def _unsteered_opening(self, input_ids: torch.Tensor) -> str:
        """The first UNSTEERED_OPENING_TOKENS greedy tokens of the reply with no hook at all (the
        model as it is), for telling a refusal the model would write anyway from one steering made."""
        tok, model = self.steered.loaded.tokenizer, self.steered.loaded.model
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                 temperature=None, top_p=None, top_k=None, max_new_tokens=UNSTEERED_OPENING_TOKENS,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)

    def _generate(self, history, user_text, get_settings, on_token, cancel) -> TurnTrace:
        steered = self.steered
        start_settings = get_settings()
        threads = apply_threads(self.threads)  # the cores idle right now: a busy core would stall every step
        # refused at once when it cannot fit the context with room for the reply
        sp = self.decoding()
        prepared = steered.prepare(history, user_text, start_settings, self.system_prompt,
                                   reserve=sp.max_new_tokens)
        tok, model = steered.loaded.tokenizer, steered.loaded.model
        level_changes: list[tuple[int, str]] = []
        step = {"n": 0, "level": start_settings.level.name}

        def control() -> ClampRequest:
            s = get_settings()
            if s.level.name != step["level"]:
                level_changes.append((step["n"], s.level.name))
                step["level"] = s.level.name
            step["n"] += 1
            return steered.clamp_request(s)

        streamer = _Streamer(tok, on_token)
        first = _FirstLogits()
        gen_kwargs = dict(
            input_ids=prepared.input_ids, attention_mask=torch.ones_like(prepared.input_ids),
            max_new_tokens=sp.max_new_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]),
            logits_processor=LogitsProcessorList([first]),
            repetition_penalty=sp.repetition_penalty if sp.repetition_penalty != 1.0 else None,
        )
        if steered.hook is not None:
            # a steered reply ends once its decline is complete and never loops; both act only
            # while the hook clamps, so an unsteered reply is untouched (engine.runtime.batch)
            def rows(hook=steered.hook):
                return hook.steered_rows

            gen_kwargs["stopping_criteria"].append(RefusalStop(tok, prepared.input_ids.shape[1], rows=rows))
            gen_kwargs["logits_processor"].append(SteeredNoRepeat(STEERED_NO_REPEAT_NGRAM, rows))
        # every reply, steered or not, ends once it is caught repeating itself (unless turned off)
        guard = LoopGuard(prepared.input_ids.shape[1], end_ids(tok, tok.pad_token_id, model)) if sp.loop_guard else None
        if guard is not None:
            gen_kwargs["stopping_criteria"].append(guard)
        if sp.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k or None)
            if sp.seed is not None:
                torch.manual_seed(sp.seed)

        error = None
        t0 = time.perf_counter()
        hook = steered.hook
        try:
            with torch.inference_mode(), steered.steering(control, prepared.user_mask):
                model.generate(**gen_kwargs)
        except Exception as exc:  # keep the partial reply; the UI shows the error on the turn
            error = f"{type(exc).__name__}: {exc}"
        t1 = time.perf_counter()

        reply = streamer.text
        n_reply = len(streamer.ids)
        lo = opening_log_odds(first.first, tok) if first.first is not None else None
        end_settings = get_settings()
        trace = TurnTrace(
            prompt=user_text, reply=reply, level=start_settings.level.name,
            guidance_mode=start_settings.level.guidance.value, guidance_text=prepared.guidance,
            strength=start_settings.strength,
            conditional=steered.is_conditional(start_settings),
            open_strength=start_settings.level.open_strength if steered.closed_targets(start_settings) is not None
            else None,
            model=self.model_name, sae=self.sae_name, adapter=self.adapter_name,
            hook_layer=hook.layer if hook else None,
            stopped=bool(cancel is not None and cancel.is_set()), error=error,
            level_changes=level_changes, verdict=judge_refusal(reply, lo), seed=sp.seed,
            loop_stopped=guard is not None and bool(guard.stopped),
            lowering_only=start_settings.level.lower,
        )
        if hook is not None:
            trace.lowered = any(r.closed_targets is not None for r in hook.records) or (
                start_settings.level.lower and any(r.targets is not None for r in hook.records))
        if error is None and trace.verdict.refused and hook is not None \
                and any(r.targets is not None or r.closed_targets is not None for r in hook.records):
            trace.unsteered_opening = self._unsteered_opening(prepared.input_ids)
            trace.unsteered_refused = judge_refusal(trace.unsteered_opening).refused
        if hook is not None and hook.records:
            build_trace_features(
                trace, hook, prepared.input_ids[0].tolist(), streamer.ids, tok, steered.features,
                end_targets=steered.trace_targets(
                    end_settings, None if hook.gate_benign is None else bool(hook.gate_benign[0])),
            )
        first_at = streamer.first_token_at or t1
        gen_s = max(t1 - first_at, 1e-9)
        trace.timings.load_s = round(steered.loaded.load_s, 3)
        trace.timings.first_token_s = round(first_at - t0, 4)
        trace.timings.total_s = round(t1 - t0, 4)
        trace.timings.tokens_per_s = round((n_reply - 1) / gen_s, 2) if n_reply > 1 else 0.0
        trace.timings.prompt_tokens = int(prepared.input_ids.shape[1])
        trace.timings.reply_tokens = n_reply
        trace.timings.context_tokens = steered.context_length or 0
        trace.timings.threads = threads
        return trace


def open_session(
    model: str = "phi-3-mini", *, sae: str | None = "auto", adapter: str | None = None,
    level: str | None = None, system: str | None = None, quant: str = "auto",
    sampling: SamplingSettings | None = None, progress: ProgressCallback | None = None,
    device: str = "auto", dtype: str | None = None,
) -> Session:
    """Load a model (and its SAE, features and calibrated levels) and start a session."""
    steered = open_steered(model, sae=sae, adapter=adapter, quant=quant, device=device, dtype=dtype, progress=progress,
                           single_stream=True)
    return Session(steered, level, system, sampling)
