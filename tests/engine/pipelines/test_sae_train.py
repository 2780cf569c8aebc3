"""The SAE trainer: it learns known sparse structure, resumes exactly, and writes a loadable SAE."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from steerchat.engine.pipelines.activations import Manifest
from steerchat.engine.runtime.sae import SAE
from steerchat.engine.pipelines.sae_train import TopKTrainer, TrainConfig, lr_at, split_shards, train

# tiny tensors: with several threads on a busy machine, OpenMP barriers cost more than the maths
pytestmark = pytest.mark.usefixtures("one_thread")


D_IN, N_TRUE = 32, 48


def write_synthetic(folder, n_shards=6, per_shard=4096, active=3, seed=0):
    """A collection whose activations are sparse sums of N_TRUE known unit directions; returns them."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(N_TRUE, D_IN, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(n_shards):
        idx = torch.stack([torch.randperm(N_TRUE, generator=g)[:active] for _ in range(per_shard)])
        mags = 1 + 2 * torch.rand(per_shard, active, generator=g)
        x = (mags[..., None] * dirs[idx]).sum(1) * 5.0 + 0.5  # an offset and a scale, as real residuals have
        name = f"shard_{s:05d}.safetensors"
        save_file({"acts": x.half(), "token_ids": torch.zeros(per_shard, dtype=torch.int32),
                   "doc": torch.full((per_shard,), s, dtype=torch.int32),
                   "pos": torch.arange(per_shard, dtype=torch.int32)}, str(folder / name))
        shards.append({"file": name, "tokens": per_shard})
    Manifest(config={"model": "synthetic", "hook_layer": 0}, d_in=D_IN, docs_total=n_shards, docs_done=n_shards,
             shards=shards, complete=True).save(folder)
    return dirs


def test_trainer_recovers_known_sparse_directions(tmp_path):
    dirs = write_synthetic(tmp_path / "acts", n_shards=5, per_shard=3072)
    cfg = TrainConfig(d_sae=96, k=3, tokens=450 * 256, batch_size=256, lr=3e-3, dead_tokens=5000, holdout=0.2)
    report = train(cfg, tmp_path / "acts", tmp_path / "sae", model=None, progress=False)
    sae = SAE.load(tmp_path / "sae")
    assert sae.cfg.k == 3 and sae.d_sae == 96 and sae.cfg.activation_scale > 1
    assert report["explained_variance"] > 0.9, report
    assert report["l0"] <= 3
    cos = (dirs @ sae.W_dec.T / sae.W_dec.norm(dim=-1)).max(dim=1).values
    assert (cos > 0.9).float().mean() >= 0.8, cos
    assert json.loads((tmp_path / "sae" / "training.json").read_text())["steps"] == 450


def test_loss_goes_down_and_decoder_rows_stay_unit(tmp_path):
    write_synthetic(tmp_path / "acts", n_shards=3, per_shard=2048)
    cfg = TrainConfig(d_sae=64, k=3, tokens=50 * 256, batch_size=256, lr=3e-3, holdout=0.34)
    first = train(cfg, tmp_path / "acts", tmp_path / "a", progress=False, stop_at=1)
    trainer = TopKTrainer(D_IN, 64, 3, seed=0)
    x = torch.randn(8, D_IN)
    *_, mse0, _ = trainer(x)
    report = train(cfg, tmp_path / "acts", tmp_path / "b", progress=False)
    assert report["explained_variance"] > 0.5
    sae = SAE.load(tmp_path / "b")
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-3)
    assert first["steps"] == 1 and mse0 > 0


def test_resume_matches_uninterrupted_run(tmp_path):
    write_synthetic(tmp_path / "acts", n_shards=4, per_shard=1024)
    cfg = TrainConfig(d_sae=64, k=3, tokens=60 * 128, batch_size=128, lr=3e-3, checkpoint_every=1000,
                      dead_tokens=500, holdout=0.25, shards_per_group=2)
    train(cfg, tmp_path / "acts", tmp_path / "whole", progress=False)
    partial = train(cfg, tmp_path / "acts", tmp_path / "resumed", progress=False, stop_at=23)
    assert partial["steps"] == 23 and not (tmp_path / "resumed" / "sae_weights.safetensors").exists()
    train(cfg, tmp_path / "acts", tmp_path / "resumed", progress=False)
    a, b = SAE.load(tmp_path / "whole"), SAE.load(tmp_path / "resumed")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_checkpoint_with_other_settings_is_refused(tmp_path):
    write_synthetic(tmp_path / "acts", n_shards=2, per_shard=512)
    cfg = TrainConfig(d_sae=32, k=2, tokens=20 * 64, batch_size=64, holdout=0.5)
    train(cfg, tmp_path / "acts", tmp_path / "sae", progress=False, stop_at=5)
    with pytest.raises(Exception, match="other settings"):
        train(TrainConfig(d_sae=32, k=3, tokens=20 * 64, batch_size=64, holdout=0.5), tmp_path / "acts",
              tmp_path / "sae", progress=False)


def test_schedule_and_split():
    cfg = TrainConfig(d_sae=8, tokens=1000, batch_size=10, lr=1.0, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(50, cfg) == 1.0
    assert lr_at(90, cfg) == pytest.approx(0.5) and lr_at(99, cfg) == pytest.approx(0.05)
    train_idx, held = split_shards(20, 0.1)
    assert held == [9, 19] and len(train_idx) == 18
    with pytest.raises(Exception, match="at least 2"):
        split_shards(1, 0.1)
