"""Stage 4 — LoRA fine-tuning (peft) of the chat model on the stage-3 set.

A plain PyTorch loop: AdamW, linear warm-up then linear or cosine decay, gradient
accumulation, and loss on the reply tokens only (the prompt is masked with -100).
Every `save_every` steps a checkpoint holds the adapter, the optimizer, the scheduler,
the RNG state and the step; the data order is a function of (seed, step), so a run
resumed from a checkpoint ends with the same weights as one that never stopped.

On CUDA with a 4-bit base (Phi-3 Mini's default) the model is prepared the QLoRA way:
`peft.prepare_model_for_kbit_training` (norms in fp32, gradient checkpointing) and
LoRA adapters in full precision over the frozen NF4 weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from steerchat.engine.core.config import FinetuneConfig
from steerchat.engine.pipelines.align.records import AlignError, TrainingRow
from steerchat.engine.runtime.batch import pad_batch, pad_id

ADAPTER_MANIFEST = "steerchat_adapter.json"
STATE_NAME = "trainer_state.pt"
# Projection names of the attention and MLP blocks across Llama-, Phi-3- and GPT-style models.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj",
               "gate_up_proj", "dense", "fc1", "fc2", "c_attn", "c_proj", "c_fc")

StepCallback = Callable[[int, float, float], None]  # (step, loss, learning rate)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on the prompt


@dataclass
class FinetuneResult:
    out_dir: Path
    steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped_rows: int = 0


# ---------------------------------------------------------------- data


def encode_row(tokenizer, row: TrainingRow, max_seq_len: int) -> Encoded | None:
    """Tokens of one row in the model's chat template, with the prompt masked.

    The reply's tokens are what the full conversation adds after the rendered prompt
    (so the template's end-of-turn token is learnt too). None when the prompt alone
    leaves no room for the reply.
    """
    user = [{"role": "user", "content": row.prompt}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": row.reply}], tokenize=False)
    if full.startswith(prompt):
        reply_text = full[len(prompt):]
    else:  # templates that rewrite earlier turns: fall back to the reply and end-of-sequence
        reply_text = row.reply + (tokenizer.eos_token or "")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply_text, add_special_tokens=False)["input_ids"]
    if len(p_ids) >= max_seq_len - 8:
        return None
    ids = (p_ids + r_ids)[:max_seq_len]
    labels = ([-100] * len(p_ids) + r_ids)[:max_seq_len]
    return Encoded(ids, labels)


def collate(batch: list[Encoded], pad: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (padding is never learnt: label -100)."""
    inputs = pad_batch([e.input_ids for e in batch], pad, "right", device)
    labels = pad_batch([e.labels for e in batch], -100, "right", device)
    return {"input_ids": inputs.input_ids, "labels": labels.input_ids, "attention_mask": inputs.attention_mask}


def micro_batch_indices(n_rows: int, batch_size: int, micro: int, seed: int) -> list[int]:
    """Row indices of micro-batch number `micro`: a fresh seeded permutation each epoch,
    so the order depends only on (seed, micro), never on where a run was resumed."""
    out = []
    pos = micro * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_rows)
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


# ---------------------------------------------------------------- model


def find_target_modules(model) -> list[str]:
    """Names of the attention/MLP projection layers to adapt (never the LM head)."""
    names = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in PROJECTIONS and hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 2:
            names.add(leaf)
    if not names:
        raise AlignError("found no attention/MLP projection layers to put LoRA adapters on; give target modules")
    return sorted(names)


def _kbit(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def add_lora(model, cfg: FinetuneConfig):
    """Wrap `model` with fresh LoRA adapters (QLoRA preparation first for a 4/8-bit base)."""
    try:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    except ImportError:
        raise AlignError("LoRA fine-tuning needs peft: pip install 'steerchat[train]'") from None

    if _kbit(model):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    targets = cfg.target_modules or find_target_modules(model)
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def _schedule(cfg: FinetuneConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(p for p in (Path(out_dir) / "checkpoints").glob("step-*") if (p / STATE_NAME).is_file())
    return found[-1] if found else None


def _save_checkpoint(model, optimizer, scheduler, step: int, losses: list[float], cfg: FinetuneConfig,
                     out_dir: Path) -> Path:
    folder = checkpoint_dir(out_dir, step)
    model.save_pretrained(str(folder))
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "torch_rng": torch.get_rng_state(), "losses": losses, "config": asdict(cfg)}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    tmp = folder / (STATE_NAME + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / STATE_NAME)  # the state file appears last: a checkpoint with it is complete
    return folder


def _load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[int, list[float]]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
    state = torch.load(folder / STATE_NAME, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), list(state["losses"])


# ---------------------------------------------------------------- training


def check_config(cfg: FinetuneConfig) -> None:
    """AlignError for settings that would train nothing or that peft/torch reject obscurely."""
    for name in ("steps", "rank", "alpha", "batch_size", "grad_accum", "max_seq_len"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AlignError(f"fine-tuning: {name} must be a whole number of at least 1, got {value!r}")
    if not (isinstance(cfg.lr, (int, float)) and math.isfinite(cfg.lr) and cfg.lr > 0):
        raise AlignError(f"fine-tuning: the learning rate must be a finite number above 0, got {cfg.lr!r}")
    if not 0 <= cfg.dropout < 1:
        raise AlignError(f"fine-tuning: dropout must be at least 0 and below 1, got {cfg.dropout!r}")
    if cfg.warmup_steps < 0:
        raise AlignError(f"fine-tuning: warmup_steps must be at least 0, got {cfg.warmup_steps!r}")


def finetune(loaded, rows: list[TrainingRow], out_dir: Path, cfg: FinetuneConfig, *, resume: bool = False,
             data_info: dict | None = None, on_step: StepCallback | None = None,
             stop_after: int | None = None) -> FinetuneResult:
    """Train LoRA adapters on `rows` and save them (with a manifest) in `out_dir`.

    `loaded` is an `engine.runtime.loading.LoadedModel`; its model is wrapped in place. With
    `resume`, training continues from the latest checkpoint in `out_dir`. `stop_after`
    ends the run after that many steps (as an interruption would) without saving the
    final adapter.
    """
    out_dir = Path(out_dir)
    check_config(cfg)
    tok = loaded.tokenizer
    encoded = [encode_row(tok, r, cfg.max_seq_len) for r in rows]
    data = [e for e in encoded if e is not None]
    if not data:
        raise AlignError(f"no training row fits in {cfg.max_seq_len} tokens")
    previous = latest_checkpoint(out_dir) if resume else None
    if resume and previous is None:
        raise AlignError(f"{out_dir}: no checkpoint to resume from")
    if not resume and latest_checkpoint(out_dir) is not None:
        raise AlignError(f"{out_dir} already holds checkpoints; resume, or choose another output folder")

    torch.manual_seed(cfg.seed)
    model = add_lora(loaded.model, cfg)
    loaded.model = model
    model.train()
    model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg))
    step, losses = 0, []
    if previous is not None:
        step, losses = _load_checkpoint(previous, model, optimizer, scheduler)
    else:
        torch.manual_seed(cfg.seed + 1)  # dropout stream independent of the LoRA init

    device = next(p for p in model.parameters()).device
    pad = pad_id(tok)
    t0 = time.perf_counter()
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    while step < end:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for k in range(cfg.grad_accum):
            idx = micro_batch_indices(len(data), cfg.batch_size, step * cfg.grad_accum + k, cfg.seed)
            batch = collate([data[i] for i in idx], pad, device)
            loss = model(**batch).loss / cfg.grad_accum
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(round(total, 5))
        if on_step:
            on_step(step, total, scheduler.get_last_lr()[0])
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _save_checkpoint(model, optimizer, scheduler, step, losses, cfg, out_dir)
    seconds = time.perf_counter() - t0
    model.eval()
    result = FinetuneResult(out_dir, step, losses[-1] if losses else float("nan"), losses, seconds,
                            len(encoded) - len(data))
    if step >= cfg.steps:
        model.save_pretrained(str(out_dir))
        write_manifest(out_dir, loaded, cfg, result, data_info or {}, rows)
    return result


def write_manifest(out_dir: Path, loaded, cfg: FinetuneConfig, result: FinetuneResult, data_info: dict,
                   rows: list[TrainingRow]) -> dict:
    import peft
    import transformers

    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "base_model": {"name": loaded.name, "source": loaded.source, "quant": loaded.quant,
                       "dtype": str(loaded.dtype).replace("torch.", ""), "device": str(loaded.device)},
        "data": {**data_info, "rows": len(rows), "rows_used": len(rows) - result.skipped_rows, "kinds": kinds},
        "hyper_parameters": asdict(cfg),
        "target_modules": sorted(loaded.model.peft_config["default"].target_modules),
        "trainable_parameters": sum(p.numel() for p in loaded.model.parameters() if p.requires_grad),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "first_loss": result.losses[0] if result.losses else None,
        "losses": result.losses,
        "seconds_this_run": round(result.seconds, 1),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    (Path(out_dir) / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
