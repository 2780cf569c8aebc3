"""Data-parallel SAE training: two CPU processes (gloo) launched by torchrun through the real
command line give the same SAE as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steerchat.engine.core.api import EngineError
from steerchat.engine.pipelines.sae_train import DataParallel, TrainConfig, train
from steerchat.engine.runtime.sae import SAE
from tests.engine.pipelines.test_sae_train import write_synthetic

ROOT = Path(__file__).resolve().parents[3]
ARGS = dict(d_sae=64, k=3, tokens=40 * 128, batch_size=128, lr=3e-3, holdout=0.25,
            checkpoint_every=1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, acts: Path, out: Path, dead_tokens: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "steerchat", "sae", "train", "--activations", str(acts),
           "--out", str(out), "--device", "cpu", "--eval-docs", "0", "--save-dtype", "float32",
           "--d-sae", "64", "--k", "3", "--tokens", str(ARGS["tokens"]), "--batch-size", "128", "--lr", "0.003",
           "--holdout", "0.25", "--dead-tokens", str(dead_tokens), "--checkpoint-every", "1000"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_match_one_process(tmp_path):
    torch.set_num_threads(1)
    write_synthetic(tmp_path / "acts", n_shards=4, per_shard=1024)
    # dead_tokens 200k: no latent goes dead in 40 steps of 128 tokens, so the aux-k loss is 0 in
    # both runs and the two compute the same gradients. Each rank averages over its 64 tokens and
    # DDP averages the two, which equals the mean over 128 up to float summation order; after 40
    # Adam steps that reordering left differences of at most 1.2e-7 when measured (tolerance 1e-5).
    # With dead latents the aux-k loss normalises by each rank's own error variance, so it would
    # not be identical to one process (an average of per-slice ratios, not one ratio).
    cfg = TrainConfig(**ARGS, dead_tokens=200_000)
    one = train(cfg, tmp_path / "acts", tmp_path / "one", progress=False, save_dtype="float32")
    run = _torchrun(tmp_path, tmp_path / "acts", tmp_path / "two", dead_tokens=200_000)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1  # only rank 0 reports
    a, b = SAE.load(tmp_path / "one"), SAE.load(tmp_path / "two")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name
    two = json.loads((tmp_path / "two" / "training.json").read_text())
    assert two["steps"] == one["steps"] == 40 and two["processes"] == 2
    assert two["train_tokens"] == one["train_tokens"]
    assert abs(two["explained_variance"] - one["explained_variance"]) < 1e-3
    assert two["dead_fraction"] == one["dead_fraction"]


def test_dead_latent_counters_are_shared_across_ranks(tmp_path):
    # small dead_tokens: latents go dead, the aux-k loss runs; the counters must be the global
    # ones (each rank counts 128 tokens a step and zeroes what fired on either rank)
    write_synthetic(tmp_path / "acts", n_shards=4, per_shard=1024)
    cfg = TrainConfig(**ARGS, dead_tokens=300)
    one = train(cfg, tmp_path / "acts", tmp_path / "one", progress=False, save_dtype="float32")
    run = _torchrun(tmp_path, tmp_path / "acts", tmp_path / "two", dead_tokens=300)
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "training.json").read_text())
    assert abs(two["dead_fraction"] - one["dead_fraction"]) <= 0.1
    assert abs(two["explained_variance"] - one["explained_variance"]) < 0.05


def test_one_process_is_not_distributed(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    par = DataParallel("cpu")
    x = torch.arange(6.0)
    assert not par.active and par.is_main and par.local(x) is x


def test_batch_must_split_over_processes(monkeypatch):
    par = DataParallel.__new__(DataParallel)
    par.world, par.rank = 3, 0
    with pytest.raises(EngineError, match="multiple of 3"):
        par.check_batch(128)
