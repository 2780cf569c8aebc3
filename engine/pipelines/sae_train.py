"""Training a Top-k SAE on collected activations, and measuring how good it is.

The recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
  - inputs scaled so that E||x|| = sqrt(d_in) (the scale is stored as `activation_scale`);
  - decoder rows at unit norm (renormalised after every step, and the gradient's component
    along each row removed first), W_enc = W_dec^T and b_dec = the data mean at init;
  - loss = ||x - x_hat||^2 + aux_coef * (aux-k loss): the top `aux_k` latents among the
    dead ones (idle for `dead_tokens` tokens) reconstruct the residual error, normalised
    by its variance, which pulls dead latents back into use;
  - Adam with linear warm-up, constant, then linear decay to zero over the last 20%.

Only the dense encoder product runs over all latents; the chosen k latents are
recomputed by gathering their encoder rows, and decoding is an `embedding_bag` over
them, so the backward pass costs O(B k d) rather than O(B d_sae d). Batches are a pure
function of (seed, step), so a run resumed from its checkpoint ends bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from steerchat.engine.core.api import EngineError
from steerchat.engine.core.config import TrainConfig
from steerchat.engine.core.jsonl import iter_jsonl
from steerchat.engine.pipelines.activations import (
    DOCS,
    CollectConfig,
    Manifest,
    load_shard,
    render,
)
from steerchat.engine.runtime.layers import decoder_layer, layer_hidden, with_hidden
from steerchat.engine.runtime.loading import load_model
from steerchat.engine.runtime.sae import SAE, SAEConfig
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint"
REPORT = "training.json"

# Seeds for the data order are built from the run's seed, the epoch and the shard group by
# multiplying with distinct primes, so no two (epoch, group) pairs share a shuffle.
_EPOCH_PRIME = 1_000_003
_GROUP_SEED_PRIME = 7919
_GROUP_EPOCH_PRIME = 104_729
# Tokens used to set b_dec to the data mean at init: eight batches, capped to bound memory.
_MEAN_INIT_BATCHES = 8
_MEAN_INIT_MAX_TOKENS = 65_536
# Tokens encoded at once when measuring an SAE on held-out shards.
EVAL_CHUNK = 4096


def split_shards(n: int, holdout: float) -> tuple[list[int], list[int]]:
    """(train, held-out) shard indices: every m-th shard is held out (documents are shuffled across shards)."""
    if n < 2:
        raise EngineError(f"need at least 2 activation shards to hold one out, found {n}; collect more data")
    m = max(2, round(1 / holdout)) if holdout > 0 else n + 1
    held = [i for i in range(n) if i % m == m - 1] or [n - 1]
    return [i for i in range(n) if i not in held], held


class BatchStream:
    """Training batches as a pure function of (seed, step): epochs shuffle shard order,
    groups of shards are loaded together and their tokens shuffled, remainders dropped."""

    def __init__(self, folder: Path, manifest: Manifest, shards: list[int], batch_size: int, seed: int,
                 group: int = 8):
        self.folder, self.manifest, self.shards = folder, manifest, shards
        self.batch_size, self.seed, self.group = batch_size, seed, group
        if sum(manifest.shards[i]["tokens"] for i in shards) < batch_size:
            raise EngineError(f"{folder}: fewer training activations than one batch of {batch_size}")

    def _groups(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * _EPOCH_PRIME + epoch)
        order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=g).tolist()]
        return [order[i : i + self.group] for i in range(0, len(order), self.group)]

    def batches(self, start_step: int = 0) -> Iterator[torch.Tensor]:
        step, epoch = 0, 0
        while True:
            for gi, group in enumerate(self._groups(epoch)):
                n = sum(self.manifest.shards[i]["tokens"] for i in group) // self.batch_size
                if step + n <= start_step:  # skipped without loading: resuming is cheap
                    step += n
                    continue
                acts = torch.cat([load_shard(self.folder, self.manifest.shards[i])["acts"] for i in group])
                g = torch.Generator().manual_seed(self.seed * _GROUP_SEED_PRIME + epoch * _GROUP_EPOCH_PRIME + gi)
                perm = torch.randperm(acts.shape[0], generator=g)
                for b in range(n):
                    if step >= start_step:
                        yield acts[perm[b * self.batch_size : (b + 1) * self.batch_size]].float()
                    step += 1
            epoch += 1


class TopKTrainer(torch.nn.Module):
    """The SAE's parameters in training layout (encoder rows = W_enc^T) and its loss."""

    def __init__(self, d_in: int, d_sae: int, k: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        dec = torch.randn(d_sae, d_in, generator=g)
        dec /= dec.norm(dim=-1, keepdim=True)
        self.dec = torch.nn.Parameter(dec)
        self.enc = torch.nn.Parameter(dec.clone())  # W_enc = W_dec^T
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.k = k

    def _select(self, z: torch.Tensor, xc: torch.Tensor, k: int, mask: torch.Tensor | None = None):
        with torch.no_grad():
            zz = z if mask is None else z.masked_fill(~mask, float("-inf"))
            idx = zz.topk(k, dim=-1, sorted=False).indices
        pre = (F.embedding(idx, self.enc) * xc[:, None, :]).sum(-1) + self.b_enc[idx]
        return idx, torch.relu(pre)

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None, aux_k: int = 0):
        """(x_hat, idx, vals, mse, aux) for normalised inputs x (B, d_in)."""
        xc = x - self.b_dec
        with torch.no_grad():
            z = xc @ self.enc.T + self.b_enc
        idx, vals = self._select(z, xc, self.k)
        x_hat = F.embedding_bag(idx, self.dec, per_sample_weights=vals, mode="sum") + self.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        aux = x.new_zeros(())
        if dead is not None and aux_k > 0:
            n_dead = int(dead.sum())
            if n_dead:
                a_idx, a_vals = self._select(z, xc, min(aux_k, n_dead), dead[None, :].expand_as(z))
                err = (x - x_hat).detach()
                e_hat = F.embedding_bag(a_idx, self.dec, per_sample_weights=a_vals, mode="sum")
                aux = (e_hat - err).pow(2).sum(-1).mean() / err.sub(err.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
        return x_hat, idx, vals, mse, aux

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component along each (unit) decoder row, so renormalising loses little."""
        if self.dec.grad is not None:
            self.dec.grad -= (self.dec.grad * self.dec).sum(-1, keepdim=True) * self.dec

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.dec /= self.dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def to_sae(self, cfg: SAEConfig) -> SAE:
        sae = SAE(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(self.enc.T)
            sae.W_dec.copy_(self.dec)
            sae.b_enc.copy_(self.b_enc)
            sae.b_dec.copy_(self.b_dec)
        return sae


def lr_at(step: int, cfg: TrainConfig) -> float:
    warmup = cfg.warmup if cfg.warmup is not None else max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    decay_start = int(cfg.steps * (1 - cfg.decay_frac))
    if step >= decay_start:
        return cfg.lr * max(0.0, (cfg.steps - step) / max(1, cfg.steps - decay_start))
    return cfg.lr


def activation_scale(folder: Path, manifest: Manifest, shards: list[int], limit: int = 4) -> float:
    """s with E||x/s|| = sqrt(d_in), from the first few training shards."""
    norms = torch.cat([load_shard(folder, manifest.shards[i])["acts"].float().norm(dim=-1) for i in shards[:limit]])
    return float(norms.mean() / math.sqrt(manifest.d_in))


# ------------------------------------------------------------------ checkpoints


def _save_checkpoint(folder: Path, trainer: TopKTrainer, opt: torch.optim.Optimizer, idle: torch.Tensor,
                     step: int, meta: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in trainer.named_parameters()}
    names = [n for n, _ in trainer.named_parameters()]
    for i, name in enumerate(names):
        for key, value in opt.state.get(opt.param_groups[0]["params"][i], {}).items():
            tensors[f"adam.{name}.{key}"] = value.detach().reshape(-1).clone() if key == "step" else value.detach()
    tensors["idle"] = idle
    save_file(tensors, str(folder / "state.safetensors.tmp"))
    (folder / "state.safetensors.tmp").replace(folder / "state.safetensors")
    (folder / "state.json").write_text(json.dumps({**meta, "step": step}, indent=1))


def _load_checkpoint(folder: Path, trainer: TopKTrainer, opt: torch.optim.Optimizer, meta: dict) -> tuple[int, torch.Tensor]:
    saved = json.loads((folder / "state.json").read_text())
    if {k: saved.get(k) for k in meta} != meta:
        raise EngineError(f"{folder}: the checkpoint was made with other settings; use another --out or delete it")
    tensors = load_file(str(folder / "state.safetensors"))
    names = [n for n, _ in trainer.named_parameters()]
    with torch.no_grad():
        for name, p in trainer.named_parameters():
            p.copy_(tensors[f"param.{name}"])
    state = {}
    for i, name in enumerate(names):
        st = {key.split(".")[-1]: t for key, t in tensors.items() if key.startswith(f"adam.{name}.")}
        if st:
            st["step"] = st["step"].reshape(())
            state[i] = st
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return int(saved["step"]), tensors["idle"]


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def reconstruction_metrics(sae: SAE, folder: Path, manifest: Manifest, shards: list[int],
                           batch: int = EVAL_CHUNK) -> dict:
    """Explained variance (1 - FVU), mean L0 and never-fired fraction on held-out shards."""
    sq_err = total = l0 = 0.0
    n = 0
    s1 = s2 = None
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for i in shards:
        acts = load_shard(folder, manifest.shards[i])["acts"].float()
        for x in acts.split(batch):
            f = sae.encode(x)
            x_hat = sae.decode(f)
            sq_err += float((x - x_hat).pow(2).sum())
            l0 += float((f > 0).sum())
            fired |= (f > 0).any(0).cpu()
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 = x.pow(2).sum(0) if s2 is None else s2 + x.pow(2).sum(0)
            n += x.shape[0]
    total = float((s2 - s1.pow(2) / n).sum())
    return {"explained_variance": round(1 - sq_err / total, 4), "l0": round(l0 / n, 2),
            "never_fired_fraction": round(1 - float(fired.float().mean()), 4), "heldout_tokens": n}


@torch.no_grad()
def next_token_loss(sae: SAE, loaded, folder: Path, manifest: Manifest, shards: list[int], n_docs: int,
                    outlier_factor: float = CollectConfig.outlier_factor) -> dict:
    """Mean next-token loss on held-out documents: clean, with the SAE's output replacing the
    residual (positions excluded from training keep theirs), and with the residual replaced by its mean."""
    max_len = int(manifest.config.get("max_len", CollectConfig.max_len))  # as the documents were collected
    doc_ids: list[int] = []
    for i in shards:
        for d in load_shard(folder, manifest.shards[i])["doc"].unique().tolist():
            if d not in doc_ids:
                doc_ids.append(d)
    doc_ids = sorted(doc_ids)[:n_docs]
    docs = [doc for _, doc in iter_jsonl(folder / DOCS, error=EngineError)]
    tok, model = loaded.tokenizer, loaded.model
    mode = {"how": "clean"}
    mean = sae.b_dec * sae.cfg.activation_scale

    def splice(module, args, output):
        h = layer_hidden(output)
        if mode["how"] == "clean":
            return output
        norms = h.norm(dim=-1)
        keep = torch.ones_like(norms, dtype=torch.bool)
        keep[:, 0] = False
        keep &= norms <= outlier_factor * norms[:, 1:].median()
        new = sae(h.float()).to(h.dtype) if mode["how"] == "sae" else mean.to(h.dtype).expand_as(h)
        return with_hidden(output, torch.where(keep[..., None], new, h))

    handle = decoder_layer(model, sae.cfg.hook_layer).register_forward_hook(splice)
    sums = {"clean": 0.0, "sae": 0.0, "mean": 0.0}
    count = 0
    try:
        for d in doc_ids:
            text = render(tok, docs[d])
            ids = tok(text, add_special_tokens=False, truncation=True, max_length=max_len, return_tensors="pt")["input_ids"]
            ids = ids.to(loaded.device)
            if ids.shape[1] < 3:
                continue
            for how in sums:
                mode["how"] = how
                logits = model(input_ids=ids).logits[0, :-1].float()
                sums[how] += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    finally:
        handle.remove()
    if not count:
        return {}
    clean, spliced, ablated = (sums[k] / count for k in ("clean", "sae", "mean"))
    return {"ce_clean": round(clean, 4), "ce_with_sae": round(spliced, 4), "ce_increase": round(spliced - clean, 4),
            "ce_mean_ablated": round(ablated, 4),
            "loss_recovered": round(1 - (spliced - clean) / max(ablated - clean, 1e-8), 4),
            "ce_docs": len(doc_ids), "ce_tokens": count}


# ------------------------------------------------------------------ data parallel


class DataParallel:
    """Data-parallel training over torch.distributed: one process per device, launched by
    `torchrun --nproc-per-node N -m steerchat sae train ...` (its RANK/WORLD_SIZE/LOCAL_RANK/
    MASTER_ADDR variables are read here; nothing changes for a plain one-process run).

    Every rank reads the same global batch (a pure function of seed and step) and trains on
    its own contiguous slice of it; the model is wrapped in DistributedDataParallel, which
    averages gradients, so every rank takes the same Adam step on identical parameters. The
    dead-latent counters are kept identical by all-reducing which latents fired. Only rank 0
    writes checkpoints, the SAE and the report."""

    def __init__(self, device: str):
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started_here = False
        if self.world > 1 and not dist.is_initialized():
            cuda = device in ("auto", "cuda") and torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
            self.started_here = True

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        if self.active and device in ("auto", "cuda") and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                            else ("cpu" if device == "auto" else device))

    def check_batch(self, batch_size: int) -> None:
        if self.active and batch_size % self.world:
            raise EngineError(f"--batch-size {batch_size} does not split evenly over {self.world} processes; "
                              f"use a multiple of {self.world}")

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch."""
        if not self.active:
            return x
        n = x.shape[0] // self.world
        return x[self.rank * n : (self.rank + 1) * n]

    def fired_anywhere(self, fired: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return fired
        flags = fired.to(torch.int32)
        self.dist.all_reduce(flags, op=self.dist.ReduceOp.MAX)
        return flags.bool()

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.started_here and self.dist.is_initialized():
            self.dist.destroy_process_group()


# ------------------------------------------------------------------ the run


def train(cfg: TrainConfig, activations: str | Path, out: str | Path, device: str = "auto",
          model: str | None = None, eval_docs: int = 64, save_dtype: str = "float16", command: str = "",
          stop_at: int | None = None, progress: bool = True) -> dict:
    """Train (or resume) a Top-k SAE on a collection; write the SAE folder and return the report.

    `stop_at` ends the run early at that step after checkpointing (for tests of resuming).
    """
    par = DataParallel(device)
    try:
        report = _train(cfg, activations, out, device, model, eval_docs, save_dtype, command, stop_at, progress, par)
        # the other ranks wait while rank 0 writes the SAE and the report: a rank that tore its
        # process group down and exited first sometimes died in gloo's threads (SIGABRT)
        par.barrier()
        return report
    finally:
        par.close()


def _train(cfg: TrainConfig, activations: str | Path, out: str | Path, device: str, model: str | None,
           eval_docs: int, save_dtype: str, command: str, stop_at: int | None, progress: bool,
           par: DataParallel) -> dict:
    folder, out = Path(activations), Path(out)
    manifest = Manifest.load(folder)
    par.check_batch(cfg.batch_size)
    dev = par.device(device)
    train_shards, held = split_shards(len(manifest.shards), cfg.holdout)
    d_in = manifest.d_in
    aux_k = cfg.aux_k or d_in // 2
    scale = activation_scale(folder, manifest, train_shards)
    trainer = TopKTrainer(d_in, cfg.d_sae, cfg.k, cfg.seed).to(dev)
    opt = torch.optim.Adam(trainer.parameters(), lr=cfg.lr)
    idle = torch.zeros(cfg.d_sae, dtype=torch.long, device=dev)
    meta = {"train": asdict(cfg), "activations": str(folder.resolve()), "scale": scale}
    ckpt = out / CHECKPOINT
    step = 0
    stream = BatchStream(folder, manifest, train_shards, cfg.batch_size, cfg.seed, cfg.shards_per_group)
    if (ckpt / "state.json").is_file():
        step, idle = _load_checkpoint(ckpt, trainer, opt, meta)
        idle = idle.to(dev)
    else:
        with torch.no_grad():  # b_dec at the data mean
            first = next(iter(BatchStream(folder, manifest, train_shards, min(cfg.batch_size * _MEAN_INIT_BATCHES, _MEAN_INIT_MAX_TOKENS), cfg.seed + 1,
                                          cfg.shards_per_group).batches()))
            trainer.b_dec.copy_((first / scale).mean(0).to(dev))
    net: torch.nn.Module = trainer
    if par.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(trainer, device_ids=[dev.index] if dev.type == "cuda" else None)
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="training SAE", unit="step", disable=not progress or not par.is_main)
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    batches = stream.batches(step)
    fvu = l0 = 0.0
    while step < end:
        x = par.local(next(batches)).to(dev) / scale
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        dead = idle >= cfg.dead_tokens
        x_hat, idx, vals, mse, aux = net(x, dead, aux_k)
        loss = mse + cfg.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.project_decoder_grad()
        opt.step()
        trainer.normalise_decoder()
        with torch.no_grad():
            if par.active:  # every rank counts the global batch and zeroes what fired on any rank
                idle += x.shape[0] * par.world
                fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=dev)
                fired[idx[vals > 0]] = True
                idle[par.fired_anywhere(fired)] = 0
            else:
                idle += x.shape[0]
                idle[idx[vals > 0]] = 0
        step += 1
        if step % 10 == 0 or step == end:
            with torch.no_grad():
                fvu = float(mse / (x - x.mean(0)).pow(2).sum(-1).mean())
                l0 = float((vals > 0).sum(-1).float().mean())
            bar.set_postfix(loss=f"{loss.item():.3f}", fvu=f"{fvu:.3f}", L0=f"{l0:.1f}",
                            dead=f"{float(dead.float().mean()):.3f}")
        bar.update(1)
        if (step % cfg.checkpoint_every == 0 or step == end) and par.is_main:
            _save_checkpoint(ckpt, trainer, opt, idle, step, meta)
    bar.close()
    par.barrier()  # rank 0's checkpoint is on disk before anyone moves on
    train_s = time.perf_counter() - t0

    sae_cfg = SAEConfig(d_in=d_in, d_sae=cfg.d_sae, architecture="topk", k=cfg.k,
                        hook_layer=int(manifest.config["hook_layer"]), model_name=str(manifest.config["model"]),
                        normalize_activations="expected_average_only_in", activation_scale=scale)
    sae = trainer.to_sae(sae_cfg).cpu()
    report: dict = {"steps": step, "train_tokens": step * cfg.batch_size, "train_seconds": round(train_s, 1),
                    "dead_fraction": round(float((idle >= cfg.dead_tokens).float().mean()), 4)}
    if par.active:
        report["processes"] = par.world
    if (stop_at is not None and step < cfg.steps) or not par.is_main:
        return report
    sae.save(out, dtype={"float16": torch.float16, "float32": torch.float32}[save_dtype])
    final = SAE.load(out)  # evaluate what was written, in the dtype it was written
    report.update(reconstruction_metrics(final, folder, manifest, held))
    if model and eval_docs:
        loaded = load_model(model, device=str(dev))
        report.update(next_token_loss(final.to(loaded.device), loaded, folder, manifest, held, eval_docs,
                                      float(manifest.config.get("outlier_factor", CollectConfig.outlier_factor))))
    report["command"] = command
    report["config"] = asdict(cfg)
    report["activations"] = {"folder": str(folder), "tokens": manifest.tokens, "shards": len(manifest.shards),
                             "heldout_shards": held, "excluded": manifest.excluded}
    (out / REPORT).write_text(json.dumps(report, indent=2))
    return report
