"""The pipelines' configuration dataclasses, in one torch-free module.

They live here, not beside the code that runs them, so the command line can read their
defaults at import time (for flag defaults and help texts) without loading torch: every
default is written once, here, and a changed engine default changes `steerchat ... --help`.
The pipeline modules re-export their class (`from steerchat.engine.pipelines.sae_train
import TrainConfig` still works).

  CollectConfig   `sae collect`: which sources go through the model and how they are stored
  TrainConfig     `sae train`: the Top-k SAE's size and the optimiser's schedule
  FindConfig      `features find-refusal`: how refusal features are found and validated
  FinetuneConfig  `align finetune`: the LoRA adapter and its training loop
  Plan            `align`: what the induce, analyse and dataset stages read and generate
  SweepConfig     `eval`: the sweep's reply lengths, batch size, set sizes and strengths
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CollectConfig:
    model: str
    hook_layer: int
    # of pipelines.activations.Source (it stays beside the file readers); a plain list
    # because core imports nothing from the layers above it
    sources: list
    max_new_tokens: int = 48
    gen_batch_size: int = 32
    batch_size: int = 16
    max_len: int = 256
    shard_tokens: int = 16384
    outlier_factor: float = 8.0
    prefix_every: int = 16
    guidance_every: int = 4  # every Nth chat document carries the guidance hint as its system prompt
    seed: int = 0

    def key(self) -> dict:
        """The settings a resumed run must share with the first one."""
        d = asdict(self)
        d.pop("batch_size")
        d.pop("gen_batch_size")
        return d


@dataclass
class TrainConfig:
    d_sae: int
    k: int = 32
    tokens: int = 3_000_000
    batch_size: int = 1024
    lr: float = 1e-3
    warmup: int | None = None  # steps; default 5% of the run
    decay_frac: float = 0.2
    aux_k: int | None = None  # default d_in // 2
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000
    holdout: float = 0.1
    checkpoint_every: int = 500
    seed: int = 0
    shards_per_group: int = 8

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)


@dataclass
class FindConfig:
    method: str = "direction"
    sizes: tuple[int, ...] = (4, 8, 16, 24)  # direction: set sizes fitted and validated
    candidates: int = 8  # contrast: features validated by steering
    max_features: int = 4  # contrast: most features in the set
    percentile: float = 90.0  # contrast: m_f is this percentile of refusal-token activations
    probe_strength: float = 2.0  # s at which candidates (contrast) or sets (direction) are validated
    max_new_tokens: int = 24
    batch_size: int = 32
    min_gain: float = 0.0  # a feature joins the set if the combination refuses at least this much more


@dataclass
class FinetuneConfig:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every attention/MLP projection found
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    schedule: str = "linear"  # or "cosine"
    steps: int = 200  # optimizer steps
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 256
    save_every: int = 50
    seed: int = 0


@dataclass
class Plan:
    """What a pipeline run uses; every field has a CLI flag."""

    instructions: str | None = None  # harmful instructions to induce mistakes from
    limit: int | None = None  # first N instructions (after a seeded shuffle)
    induce_hint: bool = True  # add the red-team hint; False asks plainly (a model that refuses the hint)
    mistake_files: list[str] = field(default_factory=list)  # JSONL (instruction, bad reply)
    history: str | None = None  # chat history database whose flagged replies are mistakes
    harmless: str | None = None  # ordinary instructions for guided good replies
    ordinary_limit: int | None = 300
    good_file: str | None = None  # ordinary (instruction, good reply) pairs
    answers: bool = True  # also harmful instruction → guided refusal rows
    max_new_tokens: int = 96
    analysis_tokens: int = 128
    batch_size: int = 8
    seed: int = 0


@dataclass
class SweepConfig:
    """Defaults of an evaluation sweep. `max_new_tokens` and `math_tokens` are also the
    keyword defaults of `evaluate.run_sweep` (a test keeps the two in step)."""

    max_new_tokens: int = 48  # reply length for refusal and escalation sets
    math_tokens: int = 128  # reply length for maths problems
    batch_size: int = 16  # prompts generated together (and multiple-choice items scored together)
    # items per kind of set; 0 for all
    limits: dict[str, int] = field(
        default_factory=lambda: {"unsafe": 32, "safe": 32, "mc": 40, "math": 12, "escalation": 8})
    strengths: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0)  # clamp strengths; 0 is the unsteered baseline
