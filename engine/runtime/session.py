"""A chat session: history, the chat template, streaming generation under the steering hook,
and a TurnTrace at the end of every turn.

`Session.send()` runs in the caller's thread (the UI calls it from a worker), streams
text pieces through `on_token`, stops within one token when `cancel` is set, and reads
`self.settings` at every decoding step so a slider move applies to the next token.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from steerchat.engine.core.api import EngineError, ProgressCallback, SamplingSettings, TokenCallback
from steerchat.engine.core.featureset import FeatureSet
from steerchat.engine.core.levels import LevelScale, SafetySettings, guidance_text
from steerchat.engine.runtime.loading import LoadedModel, load_model
from steerchat.engine.runtime.judge import judge_refusal, opening_log_odds
from steerchat.engine.runtime.sae import SAE
from steerchat.engine.runtime.steering import ClampRequest, FeatureGate, SteeringHook
from steerchat.engine.core.trace import TurnTrace
from steerchat.engine.runtime.tracebuild import build_trace_features

Messages = list[dict[str, str]]


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


@dataclass
class PreparedPrompt:
    input_ids: torch.Tensor  # (1, T)
    user_mask: torch.Tensor  # (1, T) True on the tokens of the latest user message
    guidance: str | None


class Session:
    """One conversation with a loaded model, optionally read and steered through an SAE."""

    def __init__(
        self,
        loaded: LoadedModel,
        sae: SAE | None = None,
        features: FeatureSet | None = None,
        levels: LevelScale | None = None,
        level: str | None = None,
        system_prompt: str | None = None,
        sampling: SamplingSettings | None = None,
        adapter_name: str | None = None,
        top_n: int = 8,
    ):
        self.loaded = loaded
        self.model_name = loaded.name
        self.sae = sae
        self.sae_name = sae.name if sae is not None else None
        self.adapter_name = adapter_name
        self.features = features or FeatureSet()
        self.levels = levels or LevelScale()
        self.settings = SafetySettings(level=self.levels.get(level) if level else self.levels.levels[0])
        self.system_prompt = system_prompt
        self.sampling = sampling or SamplingSettings()
        self.history: list[tuple[str, str]] = []
        self._busy = threading.Lock()
        self._refusal = [r.feature for r in self.features.refusal_features]
        self._reference = torch.tensor(
            [r.reference_activation for r in self.features.refusal_features], dtype=torch.float32,
            device=loaded.device,
        )
        self.hook: SteeringHook | None = None
        if sae is not None:
            gate = None
            if self.features.harm_gate is not None:
                g = self.features.harm_gate
                gate = FeatureGate(g.features, g.weights, g.threshold, g.skip_positions)
            self.hook = SteeringHook(
                sae=sae, layer=sae.cfg.hook_layer, refusal_features=self._refusal, gate=gate, top_n=top_n,
            )

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

    # ---- prompt building ----

    def build_messages(self, history: list[tuple[str, str]], user_text: str,
                       settings: SafetySettings) -> tuple[Messages, str | None]:
        guidance = guidance_text(settings.level.guidance)
        system = "\n\n".join(s for s in (self.system_prompt, guidance) if s) or None
        messages: Messages = [{"role": "system", "content": system}] if system else []
        for u, a in history:
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": user_text})
        return messages, guidance

    def _render(self, messages: Messages) -> str:
        tok = self.loaded.tokenizer
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:
            if messages and messages[0]["role"] == "system":  # templates without a system role
                system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
                rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
                return tok.apply_chat_template(rest, add_generation_prompt=True, tokenize=False)
            raise

    def prepare(self, history: list[tuple[str, str]], user_text: str, settings: SafetySettings) -> PreparedPrompt:
        messages, guidance = self.build_messages(history, user_text, settings)
        rendered = self._render(messages)
        enc = self.loaded.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor([enc["input_ids"]], device=self.loaded.device)
        start = rendered.rfind(user_text)
        end = start + len(user_text)
        mask = torch.tensor(
            [[start >= 0 and s < end and e > start for s, e in enc["offset_mapping"]]], device=self.loaded.device
        )
        return PreparedPrompt(ids, mask, guidance)

    # ---- one generation ----

    def _run(self, history: list[tuple[str, str]], user_text: str, get_settings: Callable[[], SafetySettings],
             on_token: TokenCallback | None, cancel: threading.Event | None) -> TurnTrace:
        if not self._busy.acquire(blocking=False):
            raise EngineError("A reply is already being generated; wait for it or cancel it.")
        try:
            return self._generate(history, user_text, get_settings, on_token, cancel)
        finally:
            self._busy.release()

    def _generate(self, history, user_text, get_settings, on_token, cancel) -> TurnTrace:
        start_settings = get_settings()
        prepared = self.prepare(history, user_text, start_settings)
        tok, model = self.loaded.tokenizer, self.loaded.model
        level_changes: list[tuple[int, str]] = []
        step = {"n": 0, "level": start_settings.level.name}

        def control() -> ClampRequest:
            s = get_settings()
            if s.level.name != step["level"]:
                level_changes.append((step["n"], s.level.name))
                step["level"] = s.level.name
            step["n"] += 1
            if s.strength <= 0 or not self._refusal:
                return ClampRequest(None)
            conditional = s.level.conditional and self.hook is not None and self.hook.gate is not None
            return ClampRequest(self._reference * s.strength, conditional)

        streamer = _Streamer(tok, on_token)
        first = _FirstLogits()
        sp = self.sampling
        gen_kwargs = dict(
            input_ids=prepared.input_ids, attention_mask=torch.ones_like(prepared.input_ids),
            max_new_tokens=sp.max_new_tokens, streamer=streamer, pad_token_id=tok.pad_token_id,
            stopping_criteria=StoppingCriteriaList([_Cancel(cancel)]),
            logits_processor=LogitsProcessorList([first]),
            repetition_penalty=sp.repetition_penalty if sp.repetition_penalty != 1.0 else None,
        )
        if sp.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=sp.temperature, top_p=sp.top_p, top_k=None)
            if sp.seed is not None:
                torch.manual_seed(sp.seed)

        error = None
        t0 = time.perf_counter()
        hook = self.hook
        if hook is not None:
            hook.reset()
            hook.control = control
            hook.prompt_mask = prepared.user_mask
        try:
            with torch.inference_mode():
                if hook is not None:
                    with hook.applied(model):
                        model.generate(**gen_kwargs)
                else:
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
            conditional=start_settings.level.conditional and hook is not None and hook.gate is not None,
            model=self.model_name, sae=self.sae_name, adapter=self.adapter_name,
            hook_layer=hook.layer if hook else None,
            stopped=bool(cancel is not None and cancel.is_set()), error=error,
            level_changes=level_changes, verdict=judge_refusal(reply, lo), seed=sp.seed,
        )
        if hook is not None and hook.records:
            build_trace_features(
                trace, hook, prepared.input_ids[0].tolist(), streamer.ids, tok, self.features,
                end_targets=(self._reference * end_settings.strength) if end_settings.strength > 0 else None,
            )
        first_at = streamer.first_token_at or t1
        gen_s = max(t1 - first_at, 1e-9)
        trace.timings.load_s = round(self.loaded.load_s, 3)
        trace.timings.first_token_s = round(first_at - t0, 4)
        trace.timings.total_s = round(t1 - t0, 4)
        trace.timings.tokens_per_s = round((n_reply - 1) / gen_s, 2) if n_reply > 1 else 0.0
        trace.timings.prompt_tokens = int(prepared.input_ids.shape[1])
        trace.timings.reply_tokens = n_reply
        return trace


def resolve_sae(spec: str | None, loaded: LoadedModel) -> Path | None:
    """The SAE folder for `spec`: "auto" means the registry's shipped SAE, None/"none" means no SAE."""
    if spec is None or spec.lower() == "none":
        return None
    if spec == "auto":
        return loaded.entry.sae_path if loaded.entry else None
    return Path(spec).expanduser()


def resolve_features(sae_folder: Path, loaded: LoadedModel) -> FeatureSet | None:
    for candidate in (sae_folder / "features.json", sae_folder.parent / "features.json"):
        if candidate.is_file():
            return FeatureSet.load(candidate)
    if loaded.entry and loaded.entry.features_path and loaded.entry.sae_path == sae_folder:
        return FeatureSet.load(loaded.entry.features_path)
    return None


def open_session(
    model: str = "phi-3-mini", *, sae: str | None = "auto", adapter: str | None = None,
    level: str | None = None, system: str | None = None, quant: str = "auto",
    sampling: SamplingSettings | None = None, progress: ProgressCallback | None = None,
    device: str = "auto", dtype: str | None = None,
) -> Session:
    """Load a model (and its SAE, features and calibrated levels) and start a session."""
    loaded = load_model(model, quant=quant, device=device, dtype=dtype, progress=progress)
    adapter_name = None
    if adapter:
        from steerchat.engine.runtime.adapters import attach_adapter

        loaded.model, adapter_name = attach_adapter(loaded.model, adapter)
    sae_obj = features = None
    folder = resolve_sae(sae, loaded)
    if folder is not None:
        if progress:
            from steerchat.engine.core.api import LoadProgress

            progress(LoadProgress("sae", f"Loading SAE {folder.name}"))
        sae_obj = SAE.load(folder, device=loaded.device, expect_d_in=loaded.d_model)
        if sae_obj.cfg.hook_layer >= loaded.num_layers:
            raise EngineError(
                f"{folder}: hook layer {sae_obj.cfg.hook_layer} does not exist; {loaded.name} has "
                f"{loaded.num_layers} decoder layers"
            )
        features = resolve_features(folder, loaded)
    levels = LevelScale()
    if loaded.entry and loaded.entry.levels_path and loaded.entry.levels_path.is_file():
        levels = LevelScale.load(loaded.entry.levels_path)
    return Session(loaded, sae_obj, features, levels, level, system, sampling, adapter_name)
