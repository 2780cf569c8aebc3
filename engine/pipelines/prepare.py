"""`steerchat prepare MODEL`: from nothing to a steerable model, one resumable command.

Stages, each recorded in `prepare.json` in the output folder (a finished stage is skipped
when the command runs again; an interrupted one resumes through its own pipeline):

  download     the weights into the Hugging Face cache (byte progress), or a local folder
  activations  hook-layer activations over chat-formatted built-in prompts: the model's own
               replies, teacher-forced refusals, harmful prompts alone (pipelines.activations;
               resumes shard by shard). Skipped's cost is small where a published SAE exists:
               a short collection is still made, because labels read it
  sae          the registry's published SAE (downloaded in its publisher's layout and
               converted), else a Top-k SAE trained on the activations (pipelines.sae_train;
               resumes from its checkpoint)
  features     refusal features (pipelines.refusal_features, the direction method)
  labels       feature labels from the collected contexts (pipelines.feature_labels)
  gate         the harm gate (pipelines.harm_gate)
  levels       a sweep over strengths with and without the gate, and calibrated levels
               (pipelines.evaluate + pipelines.calibrate; the sweep resumes item by item)

The result is a model folder laid out like the shipped ones (models/smollm2-135m):
`sae/`, `features.json`, `labels.json`, `levels.json`, plus `model.toml` (a registry entry
the chat's `--model NAME` finds) under <data>/models/<name>/. Work files (activations,
checkpoints, sweep results) stay in `work/` beside them and can be deleted afterwards.

Stored activations are bounded: at most `disk_gb` GB of float16 activations (tokens x
(2 d_in + 12) bytes), so a 3072-wide model stores at most ~325k tokens per GB; training
cycles over them for `train_tokens`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from steerchat.engine.core.api import EngineError
from steerchat.engine.core.config import CollectConfig, FindConfig, TrainConfig
from steerchat.engine.core.datasets import load_prompts
from steerchat.engine.core.featureset import FeatureSet
from steerchat.engine.core.levels import SafetySettings
from steerchat.engine.pipelines import activations as acts_mod
from steerchat.engine.pipelines.calibrate import choose_levels, write_levels
from steerchat.engine.pipelines.evaluate import load_sets, run_sweep, subsample, sweep_settings
from steerchat.engine.pipelines.feature_labels import label_features
from steerchat.engine.pipelines.harm_gate import GATE_DATA, GateData, fit_harm_gate, write_gate
from steerchat.engine.pipelines.refusal_features import find_refusal_features, write_features
from steerchat.engine.pipelines.sae_train import train
from steerchat.engine.runtime.batch import generate_batch
from steerchat.engine.runtime.loading import LoadedModel, load_model, resolve
from steerchat.engine.runtime.sae_formats import install_published, load_folder, published_for
from steerchat.engine.runtime.steered import SteeredModel
from steerchat.models import PREPARED_ENTRY, user_models_dir

STAGES = ("download", "activations", "sae", "features", "labels", "gate", "levels")
STATE = "prepare.json"
DATA = Path(__file__).resolve().parent.parent / "data"
BYTES_PER_TOKEN_EXTRA = 12  # token id, document and position (int32 each) beside the activation

# Throughputs behind --plan's time figures. ESTIMATES, not measurements of this machine:
# effective FLOP/s of a forward pass (CPU: a few cores of fp32 matmul; CUDA: a mid-range GPU
# in bf16 at small batch) and the tokens a second of batched greedy generation.
FLOPS = {"cpu": 3e10, "cuda": 2e13}


@dataclass
class PrepareConfig:
    model: str
    out: str | None = None  # default <data>/models/<name>
    layer: int | None = None  # default: the registry's, else 40% of the way up
    device: str = "auto"
    disk_gb: float = 2.0  # bound on the stored activations
    max_len: int = 256
    shard_tokens: int = 16384
    train_tokens: int = 2_000_000
    d_sae: int | None = None  # default 8 x d_in
    k: int = 32
    batch_size: int = 1024
    dead_tokens: int = 200_000
    prompts: int | None = None  # at most this many prompts from each built-in list (None: all)
    max_new_tokens: int = 48
    eval_limit: int = 40  # prompts per set in the calibration sweep
    strengths: tuple[float, ...] = (1.0, 2.0, 3.0)
    published: bool = True  # use the registry's published SAE where there is one
    extra_sources: list = field(default_factory=list)  # more activations.Source entries
    seed: int = 0

    def key(self) -> dict:
        """Settings a resumed run must share with the first one."""
        d = asdict(self)
        for k in ("device", "out"):
            d.pop(k)
        d["extra_sources"] = [asdict(s) for s in self.extra_sources]
        d["strengths"] = list(self.strengths)
        return d


def model_name(spec: str) -> str:
    """The name a prepared model is found by: the registry name, a folder's name, or org--repo."""
    name, source, entry = resolve(spec)
    if entry is not None:
        return entry.name
    if Path(spec).expanduser().exists():
        base = Path(spec).expanduser().resolve().name
    else:
        base = spec.replace("/", "--")
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"


def out_folder(cfg: PrepareConfig) -> Path:
    return Path(cfg.out).expanduser() if cfg.out else user_models_dir() / model_name(cfg.model)


# ---------------------------------------------------------------- the data


def _limited(items: list[str], n: int | None) -> list[str]:
    return items if n is None else items[:n]


def _prompt_lists(cfg: PrepareConfig) -> dict[str, list[str]]:
    unsafe = [p.text for p in load_prompts(DATA / "unsafe.jsonl")]
    safe = [p.text for p in load_prompts(DATA / "safe_sounding.jsonl")]
    cut_u, cut_s = int(len(unsafe) * 0.7), int(len(safe) * 0.7)
    return {
        "harmful": _limited(unsafe[:cut_u], cfg.prompts), "val_harmful": _limited(unsafe[cut_u:], cfg.prompts),
        "harmless": _limited(safe[:cut_s], cfg.prompts), "val_harmless": _limited(safe[cut_s:], cfg.prompts),
        "subtle": _limited([p.text for p in load_prompts(GATE_DATA / "subtle_harmful.jsonl")], cfg.prompts),
        "hard": _limited([p.text for p in load_prompts(GATE_DATA / "hard_negatives.jsonl")], cfg.prompts),
    }


def token_budget(cfg: PrepareConfig, d_in: int) -> int:
    """The most activation tokens stored within `disk_gb`."""
    return int(cfg.disk_gb * 1e9 // (2 * d_in + BYTES_PER_TOKEN_EXTRA))


def collect_config(cfg: PrepareConfig, work: Path, hook_layer: int, d_in: int) -> CollectConfig:
    """Sources for the collection (built-in prompts, sliced so the worst case, every document
    at max_len tokens, fits the token budget)."""
    lists = _prompt_lists(cfg)
    src = work / "sources"
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind, prompts in (("instructions", lists["harmless"] + lists["hard"]),
                          ("refusals", lists["harmful"]), ("prompts", lists["subtle"] + lists["harmful"])):
        path = src / f"{kind}.jsonl"
        text = "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        files[kind] = (path, len(prompts))
    docs_allowed = max(3, token_budget(cfg, d_in) // cfg.max_len)
    sources, per_kind = [], max(1, docs_allowed // (len(files) + len(cfg.extra_sources)))
    for kind, (path, n) in files.items():
        sources.append(acts_mod.Source(kind, str(path), 0, min(n, per_kind)))
    sources += list(cfg.extra_sources)
    return CollectConfig(model=cfg.model, hook_layer=hook_layer, sources=sources, max_new_tokens=cfg.max_new_tokens,
                         max_len=cfg.max_len, shard_tokens=cfg.shard_tokens, seed=cfg.seed)


# ---------------------------------------------------------------- state


class State:
    """prepare.json: which stages finished, how long they took, with which settings."""

    def __init__(self, folder: Path, cfg: PrepareConfig):
        self.path = folder / STATE
        key = json.loads(json.dumps(cfg.key()))
        self.data = {"model": cfg.model, "config": key, "stages": {}}
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("config") != key:
                raise EngineError(f"{self.path}: this folder was prepared with other settings; use another --out, "
                                  "or delete the folder to start again")
            self.data = saved

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def finish(self, stage: str, seconds: float, **info) -> None:
        self.data["stages"][stage] = {"status": "done", "seconds": round(seconds, 1), **info}
        self.save()

    def start(self, stage: str) -> None:
        self.data["stages"].setdefault(stage, {})["status"] = "running"
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


# ---------------------------------------------------------------- the plan


@dataclass
class StagePlan:
    stage: str
    seconds: float | None
    disk_bytes: float
    memory_bytes: float
    note: str = ""


def _model_facts(spec: str) -> dict:
    """d_model, layers, vocabulary and parameter count from the model's config.json, without
    loading weights (None where the config is not at hand)."""
    _, source, entry = resolve(spec)
    if source.startswith("gguf:"):
        return {}
    try:
        from transformers import AutoConfig

        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        conf = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception:  # not cached offline, no network, gated: the plan says "unknown"
        return {}
    conf = getattr(conf, "text_config", conf)
    d, layers = int(conf.hidden_size), int(conf.num_hidden_layers)
    vocab = int(getattr(conf, "vocab_size", 32000))
    ffn = int(getattr(conf, "intermediate_size", 4 * d))
    params = layers * (4 * d * d + 3 * d * ffn) + vocab * d
    return {"d_model": d, "layers": layers, "vocab": vocab, "params": params}


def plan(cfg: PrepareConfig) -> list[StagePlan]:
    """Time, disk and memory per stage for this machine. Every figure is an ESTIMATE from the
    model's config and fixed throughput assumptions (FLOPS), not a measurement."""
    facts = _model_facts(cfg.model)
    _, _, entry = resolve(cfg.model)
    kind = "cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    flops = FLOPS[kind]
    if not facts:
        return [StagePlan(s, None, 0, 0, "model config not at hand (offline and not cached?)") for s in STAGES]
    d, params = facts["d_model"], facts["params"]
    d_sae = cfg.d_sae or 8 * d
    wbytes = 2 if kind == "cuda" else 4
    model_mem = params * (0.6 if (entry and entry.quant == "4bit" and kind == "cuda") else wbytes)
    n = {k: len(v) for k, v in _prompt_lists(cfg).items()}
    docs = n["harmless"] + n["hard"] + n["harmful"] + n["subtle"] + n["harmful"]
    stored = min(token_budget(cfg, d), docs * cfg.max_len)
    gen_tokens = (n["harmless"] + n["hard"]) * cfg.max_new_tokens
    fwd = lambda tokens: 2 * params * tokens / flops  # noqa: E731
    published = bool(cfg.published and entry is not None and entry.has_published_sae)
    sae_train_s = 0.0 if published else 6 * d * d_sae * cfg.train_tokens / flops
    sweep_items = 2 * min(cfg.eval_limit, 200) * (1 + 2 * len(cfg.strengths)) * 2
    return [
        StagePlan("download", None, params * 2, 0, "size of bf16 weights; time depends on the connection"),
        StagePlan("activations", fwd(stored) + fwd(gen_tokens) * 8, stored * (2 * d + BYTES_PER_TOKEN_EXTRA),
                  model_mem, f"at most {stored:,} tokens stored (bound: {cfg.disk_gb:g} GB)"),
        StagePlan("sae", sae_train_s, d * d_sae * 2 * 2 + (0 if published else 24 * d * d_sae),
                  16 * 2 * d * d_sae if not published else 4 * 2 * d * d_sae,
                  "published SAE, downloaded" if published else f"{d_sae:,} latents, k={cfg.k}, "
                  f"{cfg.train_tokens:,} tokens"),
        StagePlan("features", fwd((n["harmful"] + n["val_harmful"] + n["val_harmless"]) * 200) * 8, 1e5, model_mem),
        StagePlan("labels", stored * 2 * d * d_sae / flops, 1e6, 4 * 2 * d * d_sae),
        StagePlan("gate", fwd((n["harmful"] + n["subtle"] + n["harmless"] + n["hard"]) * 64 * 2), 1e4, model_mem),
        StagePlan("levels", fwd(sweep_items * cfg.max_new_tokens) * 8, 1e6, model_mem),
    ]


def format_plan(cfg: PrepareConfig, stages: list[StagePlan]) -> str:
    def size(b: float) -> str:
        return "-" if not b else (f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB")

    def dur(s: float | None) -> str:
        if s is None:
            return "?"
        return f"{s / 3600:.1f} h" if s >= 3600 else (f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s")

    lines = [f"steerchat prepare {cfg.model} → {out_folder(cfg)}",
             "All figures are estimates (from the model's config and assumed throughput), not measurements.",
             f"{'stage':<12} {'time':>8} {'disk':>10} {'memory':>10}  notes"]
    for p in stages:
        lines.append(f"{p.stage:<12} {dur(p.seconds):>8} {size(p.disk_bytes):>10} {size(p.memory_bytes):>10}  {p.note}")
    total = sum(p.seconds or 0 for p in stages)
    lines.append(f"{'total':<12} {dur(total):>8} {size(sum(p.disk_bytes for p in stages)):>10}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def _choose_layer(cfg: PrepareConfig, loaded: LoadedModel) -> int:
    if cfg.layer is not None:
        if not 0 <= cfg.layer < loaded.num_layers:
            raise EngineError(f"--layer {cfg.layer}: {loaded.name} has decoder layers 0 to {loaded.num_layers - 1}")
        return cfg.layer
    if loaded.entry is not None and loaded.entry.hook_layer and loaded.entry.hook_layer < loaded.num_layers:
        return loaded.entry.hook_layer
    return min(loaded.num_layers - 1, max(0, round(0.4 * loaded.num_layers)))


def _write_entry(folder: Path, cfg: PrepareConfig, loaded: LoadedModel, hook_layer: int) -> None:
    entry = loaded.entry
    source = entry.source if entry else (str(Path(cfg.model).expanduser().resolve())
                                         if Path(cfg.model).expanduser().exists() else cfg.model)
    lines = {"title": f"{entry.title if entry else loaded.name} (prepared)", "source": source,
             "quant": entry.quant if entry else "none", "cpu_dtype": entry.cpu_dtype if entry else "float32",
             "hook_layer": hook_layer, "prepared": True,
             "notes": f"Made steerable by `steerchat prepare {cfg.model}`."}
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())  # JSON strings/bools/ints are TOML
    (folder / PREPARED_ENTRY).write_text(text.replace("= True", "= true"))


def prepare(cfg: PrepareConfig, say: Callable[[str], None] = print, stop_after: str | None = None,
            progress: bool = True) -> Path:
    """Run (or resume) every stage; returns the model folder. `stop_after` ends the run once
    that stage is done (tests of resuming)."""
    if stop_after is not None and stop_after not in STAGES:
        raise EngineError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
    folder = out_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "work"
    state = State(folder, cfg)
    estimates = {p.stage: p.seconds for p in plan(cfg)} if progress else {}
    t_all = time.perf_counter()

    def stage(i: int, name: str, run: Callable[[], dict | None]) -> bool:
        if state.done(name):
            say(f"[{i}/{len(STAGES)}] {name}: done earlier, skipped")
        else:
            est = estimates.get(name)
            say(f"[{i}/{len(STAGES)}] {name}" + (f" (estimate: {est / 60:.1f} min)" if est else ""))
            state.start(name)
            t0 = time.perf_counter()
            info = run() or {}
            state.finish(name, time.perf_counter() - t0, **info)
        return name == stop_after

    loaded = load_model(cfg.model, device=cfg.device)
    hook_layer = _choose_layer(cfg, loaded)
    d_in = loaded.d_model
    if stage(1, "download", lambda: {"source": loaded.source, "load_s": round(loaded.load_s, 1)}):
        return folder

    cc = collect_config(cfg, work, hook_layer, d_in)

    def run_collect() -> dict:
        manifest = acts_mod.collect(cc, work / "activations", loaded=loaded)
        return {"tokens": manifest.tokens, "shards": len(manifest.shards), "budget_tokens": token_budget(cfg, d_in)}

    if stage(2, "activations", run_collect):
        return folder

    sae_dir = folder / "sae"
    pub = published_for(loaded.entry) if (cfg.published and loaded.entry is not None) else None
    if pub is not None and pub.path and hook_layer != loaded.entry.hook_layer:
        pub = None  # the published SAE sits on another layer than the one asked for

    def run_sae() -> dict:
        if pub is not None:
            install_published(pub, model_name(cfg.model), out=sae_dir)
            return {"published": f"{pub.repo}/{pub.path}"}
        tc = TrainConfig(d_sae=cfg.d_sae or 8 * d_in, k=cfg.k, tokens=cfg.train_tokens, batch_size=cfg.batch_size,
                         dead_tokens=cfg.dead_tokens, seed=cfg.seed)
        report = train(tc, work / "activations", work / "sae-train", device=cfg.device, model=None, eval_docs=0,
                       command=f"steerchat prepare {cfg.model}", progress=progress)
        sae_dir.mkdir(parents=True, exist_ok=True)
        for name in ("cfg.json", "sae_weights.safetensors", "training.json"):
            shutil.copy2(work / "sae-train" / name, sae_dir / name)
        return {k: report[k] for k in ("steps", "explained_variance", "l0", "dead_fraction") if k in report}

    if stage(3, "sae", run_sae):
        return folder

    sae = load_folder(sae_dir, device=loaded.device, expect_d_in=d_in)
    lists = _prompt_lists(cfg)
    find = FindConfig(method="direction", sizes=(2, 4, 8), max_new_tokens=min(24, cfg.max_new_tokens),
                      batch_size=8)

    def steered_now() -> SteeredModel:
        path = folder / "features.json"
        return SteeredModel(loaded, sae, FeatureSet.load(path) if path.is_file() else FeatureSet())

    def run_features() -> dict:
        steered = steered_now()
        replies = {r.prompt: r.reply for r in generate_batch(steered, lists["harmful"], SafetySettings(), 40, 8)}
        features, record = find_refusal_features(steered, lists["harmful"], replies, lists["harmless"],
                                                 lists["val_harmful"], lists["val_harmless"], find, progress=progress)
        write_features(folder, features, record, sae.name or model_name(cfg.model), sae.cfg.hook_layer,
                       f"steerchat prepare {cfg.model}")
        return {"features": [f.feature for f in features]}

    if stage(4, "features", run_features):
        return folder

    def run_labels() -> dict:
        labels, _ = label_features(sae, work / "activations", loaded.tokenizer, top=None,
                                   progress=progress)
        fs = FeatureSet.load(folder / "features.json")
        fs.labels = labels
        for r in fs.refusal_features:
            r.label = labels.get(r.feature, r.label)
        fs.save(folder)
        return {"labelled": len(labels)}

    if stage(5, "labels", run_labels):
        return folder

    def run_gate() -> dict:
        data = GateData(lists["harmful"] + lists["subtle"], lists["harmless"], lists["hard"])
        gate = fit_harm_gate(steered_now(), data, seed=cfg.seed)
        write_gate(folder / "features.json", gate, f"steerchat prepare {cfg.model}")
        return {"gate_features": len(gate.features), "threshold": gate.threshold}

    if stage(6, "gate", run_gate):
        return folder

    def run_levels() -> dict:
        steered = steered_now()
        sets = [subsample(s, cfg.eval_limit, cfg.seed) for s in load_sets(only=["unsafe", "safe"])]
        conditional = "both" if steered.gate is not None else "off"
        settings = sweep_settings([0.0, *cfg.strengths], conditional, ["none", "hint"])
        report = run_sweep(steered, sets, settings, work / "sweep", max_new_tokens=min(24, cfg.max_new_tokens),
                           seed=cfg.seed, show_progress=progress)
        try:
            scale = choose_levels(report["summary"])
        except ValueError as exc:
            raise EngineError(f"calibrating the levels failed: {exc}") from None
        write_levels(scale, folder / "levels.json", report)
        _write_entry(folder, cfg, loaded, sae.cfg.hook_layer)
        if not any(lv.strength > 0 for lv in scale.levels):
            say("levels: no steered setting refused more of the sweep's unsafe prompts than the model alone, so "
                "the slider offers Off and Guided only; a larger --eval-limit may measure a gain")
        return {"levels": [lv.name for lv in scale.levels]}

    stage(7, "levels", run_levels)
    if not (folder / PREPARED_ENTRY).is_file():
        _write_entry(folder, cfg, loaded, sae.cfg.hook_layer)
    say(f"ready: {folder} ({time.perf_counter() - t_all:.0f} s this run); chat with "
        f"steerchat --model {model_name(cfg.model)}")
    return folder


def estimate_line(spec: str) -> str:
    """One sentence with prepare's estimated total time for `spec` (for the chat's offer)."""
    total = sum(p.seconds or 0 for p in plan(PrepareConfig(model=spec)))
    if not total:
        return "the time it takes is unknown until the model's config is at hand"
    return f"about {math.ceil(total / 60)} min on this machine (an estimate)"
