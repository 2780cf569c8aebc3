"""A steered model: a loaded model read and steered through an SAE, shared by the chat and
every pipeline.

`SteeredModel` bundles what a steered forward pass needs (the loaded model and tokenizer,
the SAE, the steering hook on its layer, the feature set with its harm gate, and the
model's safety levels) and says, in one place, how `SafetySettings` become a clamp
request (`clamp_request`), how a conversation becomes model input (`prepare`), and how
the hook is attached for one run (`steering`). The chat session adds history and
streaming on top; sweeps, evaluation, gate fitting and data collection use it directly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from jinja2.exceptions import TemplateError
from steerchat.engine.core.api import EngineError, LoadProgress, ProgressCallback
from steerchat.engine.core.featureset import FeatureSet, RefusalFeature
from steerchat.engine.core.levels import LevelScale, SafetySettings, guidance_text
from steerchat.engine.runtime.adapters import attach_adapter
from steerchat.engine.runtime.loading import LoadedModel, load_model
from steerchat.engine.runtime.sae import SAE
from steerchat.engine.runtime.sae_formats import install_published, load_folder, published_for
from steerchat.engine.runtime.steering import ClampRequest, FeatureGate, SteeringHook

Messages = list[dict[str, str]]
History = list[tuple[str, str]]


# a prompt longer than this many characters per token of context is refused untokenised
# (no tokenizer packs 8 characters into a token on ordinary text)
CHARS_PER_TOKEN_MAX = 8


@dataclass
class PreparedPrompt:
    input_ids: torch.Tensor  # (1, T)
    user_mask: torch.Tensor  # (1, T) True on the tokens of the latest user message
    guidance: str | None


@dataclass
class SteeredModel:
    """A loaded model with (optionally) an SAE hook that records features and clamps refusal."""

    loaded: LoadedModel
    sae: SAE | None = None
    features: FeatureSet = field(default_factory=FeatureSet)
    levels: LevelScale = field(default_factory=LevelScale)
    adapter_name: str | None = None
    top_n: int = 8  # features recorded per position

    def __post_init__(self) -> None:
        self._build()

    def _build(self) -> None:
        self.refusal_features: list[int] = [r.feature for r in self.features.refusal_features]
        self.reference = torch.tensor([r.reference_activation for r in self.features.refusal_features],
                                      dtype=torch.float32, device=self.loaded.device)
        self.hook: SteeringHook | None = None
        if self.sae is not None:
            self._check_features_exist()
            gate = FeatureGate.from_spec(self.features.harm_gate) if self.features.harm_gate is not None else None
            self.hook = SteeringHook(sae=self.sae, layer=self.sae.cfg.hook_layer,
                                     refusal_features=self.refusal_features, gate=gate, top_n=self.top_n)

    def _check_features_exist(self) -> None:
        """Refuse refusal or gate features outside the SAE (a negative index would clamp another feature)."""
        d_sae = self.sae.cfg.d_sae
        gate = self.features.harm_gate
        for what, features in (("refusal feature", self.refusal_features),
                               ("harm gate feature", gate.features if gate else [])):
            bad = [f for f in features if not 0 <= f < d_sae]
            if bad:
                raise EngineError(f"features.json: {what} {bad[0]} does not exist; the SAE {self.sae.name} has "
                                  f"features 0 to {d_sae - 1}")

    # ---- what it is

    @property
    def model_name(self) -> str:
        return self.loaded.name

    @property
    def sae_name(self) -> str | None:
        return self.sae.name if self.sae is not None else None

    @property
    def gate(self) -> FeatureGate | None:
        return self.hook.gate if self.hook is not None else None

    def set_features(self, features: FeatureSet) -> None:
        """Steer with another feature set (e.g. a freshly fitted gate), on the same model and SAE."""
        self.features = features
        self._build()

    def with_features(self, features: list[int] | tuple[int, ...] | None = None,
                      references: list[float] | None = None) -> "SteeredModel":
        """A steered model on the same weights that clamps only `features`: a subset of this
        one's refusal features (their m_f kept), or any features with the given `references`.
        The harm gate and labels stay."""
        if features is None:
            return self
        if references is None:
            missing = [f for f in features if f not in self.refusal_features]
            if missing:
                raise EngineError(f"feature {missing[0]} is not one of the refusal features ({self.refusal_features})")
            by_feature = {r.feature: r for r in self.features.refusal_features}
            chosen = [by_feature[f] for f in features]
        else:
            chosen = [RefusalFeature(f, m) for f, m in zip(features, references)]
        subset = FeatureSet(refusal_features=chosen, harm_gate=self.features.harm_gate, labels=self.features.labels,
                            hook_layer=self.features.hook_layer, sae=self.features.sae)
        return SteeredModel(self.loaded, self.sae, subset, self.levels, self.adapter_name, self.top_n)

    # ---- settings → clamp

    def is_conditional(self, settings: SafetySettings) -> bool:
        """Whether `settings` clamp only where the harm gate opens (needs a gate to mean anything)."""
        return settings.level.conditional and not settings.level.lower and self.gate is not None

    def clamp_targets(self, settings: SafetySettings) -> torch.Tensor | None:
        """c_f = s · m_f for every refusal feature, or None when `settings` do not steer. A level
        that lowers refusal (Open) clamps down to s · m_f, s = 0 included, and needs the gate."""
        if not self.refusal_features:
            return None
        if settings.level.lower:
            return self.reference * settings.strength if self.gate is not None else None
        if settings.strength <= 0:
            return None
        return self.reference * settings.strength

    def closed_targets(self, settings: SafetySettings) -> torch.Tensor | None:
        """A two-sided level's lowering targets c'_f = s' · m_f for the prompts its gate judges
        benign (s' its open_strength), or None for any other level or without a gate."""
        if not (settings.level.two_sided and self.refusal_features and self.gate is not None):
            return None
        return self.reference * settings.level.open_strength

    def clamp_request(self, settings: SafetySettings) -> ClampRequest:
        """What the hook should do on a pass under `settings`."""
        return ClampRequest(self.clamp_targets(settings), self.is_conditional(settings),
                            lower_where_closed=settings.level.lower,
                            closed_targets=self.closed_targets(settings))

    def trace_targets(self, settings: SafetySettings, gate_benign: bool | None) -> torch.Tensor | None:
        """The targets a turn's refusal features were held at under `settings`: a two-sided
        level's lowering targets where the gate read the prompt as benign, else the clamp targets."""
        closed = self.closed_targets(settings) if gate_benign else None
        return closed if closed is not None else self.clamp_targets(settings)

    def control_for(self, settings: SafetySettings) -> Callable[[], ClampRequest]:
        """A hook control that applies fixed `settings` on every pass."""
        request = self.clamp_request(settings)
        return lambda: request

    @contextmanager
    def steering(self, control: Callable[[], ClampRequest] | None, prompt_mask: torch.Tensor | None = None,
                 record: bool = True) -> Iterator[SteeringHook | None]:
        """The hook attached to the model for one run (None without an SAE); removed afterwards."""
        if self.hook is None:
            yield None
            return
        with self.hook.applied(self.loaded.model, control, prompt_mask, record) as hook:
            yield hook

    # ---- conversation → model input

    def build_messages(self, history: History, user_text: str, settings: SafetySettings,
                       system_prompt: str | None = None) -> tuple[Messages, str | None]:
        """The message list (system prompt and the level's guidance, history, the new message)."""
        guidance = guidance_text(settings.level.guidance)
        system = "\n\n".join(s for s in (system_prompt, guidance) if s) or None
        messages: Messages = [{"role": "system", "content": system}] if system else []
        for u, a in history:
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": user_text})
        return messages, guidance

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages`. A template that rejects the system role
        (it raises a TemplateError) gets the system text folded into the first user message."""
        tok = self.loaded.tokenizer
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
        except TemplateError:
            if not messages or messages[0]["role"] != "system" or len(messages) < 2:
                raise
            system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
            rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            return tok.apply_chat_template(rest, add_generation_prompt=add_generation_prompt, tokenize=False)

    @property
    def context_length(self) -> int | None:
        """The most tokens the model attends over (its config's max_position_embeddings), if it says."""
        n = getattr(getattr(self.loaded.model, "config", None), "max_position_embeddings", None)
        return n if isinstance(n, int) and n > 0 else None

    def prepare(self, history: History, user_text: str, settings: SafetySettings,
                system_prompt: str | None = None, reserve: int = 0) -> PreparedPrompt:
        """Token ids of the rendered conversation and a mask of the new user message's tokens.

        Raises EngineError, before any generation, when the conversation and `reserve` tokens
        for the reply do not fit the model's context; a text far too long (more than
        CHARS_PER_TOKEN_MAX characters a token of context) is refused before it is tokenised."""
        messages, guidance = self.build_messages(history, user_text, settings, system_prompt)
        rendered = self.render(messages)
        context = self.context_length
        if context and len(rendered) > CHARS_PER_TOKEN_MAX * context:
            raise EngineError(
                f"the conversation is far too long for {self.model_name}: {len(rendered):,} characters, and its "
                f"context holds {context:,} tokens; shorten the message, the system prompt or the chat")
        enc = self.loaded.tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
        n_tokens = len(enc["input_ids"])
        if context and n_tokens + reserve > context:
            room = f" plus {reserve:,} for the reply" if reserve else ""
            raise EngineError(
                f"the conversation is too long for {self.model_name}: {n_tokens:,} tokens{room} is more than its "
                f"context of {context:,} tokens; shorten the message, the system prompt or the chat"
                + (", or ask for a shorter reply (--max-tokens)" if reserve else ""))
        device = self.loaded.device
        ids = torch.tensor([enc["input_ids"]], device=device)
        start = rendered.rfind(user_text)
        end = start + len(user_text)
        mask = torch.tensor([[start >= 0 and s < end and e > start for s, e in enc["offset_mapping"]]], device=device)
        return PreparedPrompt(ids, mask, guidance)


# ---------------------------------------------------------------- opening one


LAYER_SUFFIX = "#layer="


def split_sae_spec(spec: str | None) -> tuple[str | None, int | None]:
    """An `--sae` spec and its hook-layer override: "DIR#layer=N" (what `--sae-layer N` adds)."""
    if spec and LAYER_SUFFIX in spec:
        head, _, tail = spec.rpartition(LAYER_SUFFIX)
        if tail.isdigit():
            return head or "auto", int(tail)
    return spec, None


def resolve_sae(spec: str | None, loaded: LoadedModel, progress: ProgressCallback | None = None) -> Path | None:
    """The SAE folder for `spec`: "auto" means the registry's shipped or prepared SAE (a published
    one is downloaded and converted on first use), None/"none" means no SAE."""
    spec, _ = split_sae_spec(spec)
    if spec is None or spec.lower() == "none":
        return None
    if spec == "auto":
        if loaded.entry is None:
            return None
        if loaded.entry.sae_path is None and loaded.entry.has_published_sae:
            pub = published_for(loaded.entry)
            return install_published(pub, loaded.entry.name, progress=progress) if pub else None
        return loaded.entry.sae_path
    return Path(spec).expanduser()


def features_path(sae_folder: Path, loaded: LoadedModel) -> Path | None:
    """The features.json that goes with an SAE folder: inside it, beside it, or the registry's."""
    for candidate in (sae_folder / "features.json", sae_folder.parent / "features.json"):
        if candidate.is_file():
            return candidate
    if loaded.entry and loaded.entry.features_path and loaded.entry.sae_path == sae_folder:
        return loaded.entry.features_path
    return None


def model_levels(loaded: LoadedModel) -> LevelScale:
    """The model's calibrated levels from the registry, else the engine's defaults."""
    if loaded.entry and loaded.entry.levels_path and loaded.entry.levels_path.is_file():
        return LevelScale.load(loaded.entry.levels_path)
    return LevelScale()


def load_sae_for(loaded: LoadedModel, folder: Path, progress: ProgressCallback | None = None,
                 layer: int | None = None) -> SAE:
    """Load the SAE in `folder` for this model, checking its width and hook layer (`layer`
    overrides the one its config gives)."""
    if progress:
        progress(LoadProgress("sae", f"Loading SAE {folder.name}"))
    sae = load_folder(folder, device=loaded.device, expect_d_in=loaded.d_model, layer=layer)
    if sae.cfg.hook_layer >= loaded.num_layers:
        raise EngineError(f"{folder}: hook layer {sae.cfg.hook_layer} does not exist; {loaded.name} has "
                          f"{loaded.num_layers} decoder layers")
    return sae


def open_steered(model: str = "phi-3-mini", *, sae: str | None = "auto", adapter: str | None = None,
                 quant: str = "auto", device: str = "auto", dtype: str | None = None,
                 progress: ProgressCallback | None = None, single_stream: bool = False) -> SteeredModel:
    """Load a model with its adapter, SAE, features and calibrated levels. `single_stream`: it
    will decode one reply at a time (the chat), so the CPU may take int8 weights (load_model)."""
    if adapter and quant == "int8":
        raise EngineError("a LoRA adapter needs dense weights: leave out --quant int8 to use --adapter")
    loaded = load_model(model, quant=quant, device=device, dtype=dtype, progress=progress,
                        single_stream=single_stream and not adapter)
    adapter_name = None
    if adapter:
        loaded.model, adapter_name = attach_adapter(loaded.model, adapter)
    sae_obj, features = None, None
    folder = resolve_sae(sae, loaded, progress)
    if folder is not None:
        sae_obj = load_sae_for(loaded, folder, progress, layer=split_sae_spec(sae)[1])
        path = features_path(folder, loaded)
        features = FeatureSet.load(path) if path is not None else None
    return SteeredModel(loaded, sae_obj, features or FeatureSet(), model_levels(loaded), adapter_name)
