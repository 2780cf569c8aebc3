"""Refusal features: ranking by contrast, non-negative least squares, pursuit, and fitting a direction."""

from __future__ import annotations

import pytest
import torch

from steerchat.engine.pipelines.refusal_features import (Candidate, fit_direction, nonneg_least_squares,
                                                         pursue_direction, rank_contrast_features)
from steerchat.engine.runtime.sae import SAE

# tiny tensors: with several threads on a busy machine, OpenMP barriers cost more than the maths
pytestmark = pytest.mark.usefixtures("one_thread")


def test_rank_features_finds_the_planted_refusal_feature():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 16

    def seqs(refusal: bool):
        means = torch.rand(n, d, generator=g) * 0.5
        means[:, 7] = 3.0 + torch.rand(n, generator=g) if refusal else 0.0
        fired = (means > 0.2).float()
        return torch.stack([means, fired], dim=1)

    tokens = torch.zeros(100, d)
    tokens[:, 7] = torch.linspace(0, 10, 100)
    stats = {"refusal": seqs(True), "compliant": seqs(False), "harmless": seqs(False), "refusal_tokens": tokens}
    cands = rank_contrast_features(stats, n=3, percentile=90)
    assert isinstance(cands[0], Candidate) and cands[0].feature == 7
    assert cands[0].consistency == 1.0 and cands[0].effect_size > 5
    fired = tokens[:, 7][tokens[:, 7] > 0]
    assert abs(cands[0].reference_activation - float(torch.quantile(fired, 0.9))) < 1e-3
    assert all(c.feature != 7 for c in cands[1:])


def _unit_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w / w.norm(dim=1, keepdim=True)


def test_nonneg_least_squares_matches_lstsq_when_positive_and_clips_when_not():
    a = torch.randn(20, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c_true = torch.tensor([1.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    assert torch.allclose(nonneg_least_squares(a, a @ c_true), c_true, atol=1e-8)
    b = a @ torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)
    c = nonneg_least_squares(a, b)
    assert (c >= 0).all() and c[1] == 0
    # KKT: the gradient is zero on the positive coefficients and points outward on the zero ones
    grad = a.T @ (a @ c - b)
    assert torch.all(grad[c > 0].abs() < 1e-8) and torch.all(grad[c == 0] >= -1e-8)


def test_pursuit_recovers_a_planted_sparse_combination():
    w = _unit_rows(256, 128)
    target = 2.0 * w[3] + 1.0 * w[10] + 0.5 * w[200]
    feats, coef = pursue_direction(w, target, k=3)
    got = dict(zip(feats, coef.tolist()))
    assert set(got) == {3, 10, 200}
    assert abs(got[3] - 2.0) < 1e-6 and abs(got[10] - 1.0) < 1e-6 and abs(got[200] - 0.5) < 1e-6


def test_pursuit_never_uses_a_negative_coefficient_or_a_forbidden_row():
    w = _unit_rows(64, 32, seed=2)
    target = w[7] - w[5]
    allowed = torch.ones(64, dtype=torch.bool)
    allowed[7] = False
    feats, coef = pursue_direction(w, target, k=10, allowed=allowed)
    assert 7 not in feats and (coef > 0).all()
    assert len(feats) <= 10
    # a target no allowed row points along yields nothing rather than a negative clamp
    only = torch.zeros(64, dtype=torch.bool)
    only[5] = True
    feats, coef = pursue_direction(w, -w[5], k=3, allowed=only)
    assert feats == [] and coef.numel() == 0


def test_fit_direction_reference_activations_rebuild_the_direction_in_residual_units():
    sae = SAE.random(d_in=48, d_sae=96, k=4, seed=3)
    sae.cfg.activation_scale = 3.0  # decoder rows count 3x in the residual
    dirs = sae.decoder_directions(list(range(96))).double()
    direction = 1.5 * dirs[11] + 0.75 * dirs[40]
    mean_refusal = torch.zeros(96, dtype=torch.float64)
    mean_refusal[[11, 40, 50]] = 1.0  # feature 50 fires on refusals too but is not part of the direction
    stats = {"direction": direction, "mean_refusal": mean_refusal, "mean_compliant": torch.zeros(96, dtype=torch.float64),
             "fire_refusal": (mean_refusal > 0).double(), "fire_compliant": torch.zeros(96, dtype=torch.float64)}
    cands, cos = fit_direction(sae, stats, k=4)
    refs = {c.feature: c.reference_activation for c in cands}
    assert set(refs) == {11, 40} and cos > 0.9999
    assert abs(refs[11] - 1.5) < 1e-3 and abs(refs[40] - 0.75) < 1e-3
    # only features that fire more on refusals are eligible: nothing else can enter the fit
    stats["mean_refusal"][40] = 0.0
    cands, cos = fit_direction(sae, stats, k=4)
    assert {c.feature for c in cands} <= {11, 50} and cos < 0.99
