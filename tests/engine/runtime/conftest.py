"""The runtime tests' shared pieces: the tiny random model loaded once per module, and a small
random SAE on its decoder layer LAYER."""

from __future__ import annotations

import pytest

LAYER = 1


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from steerchat.engine.runtime.loading import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture
def sae():
    from steerchat.engine.runtime.sae import SAE

    return SAE.random(d_in=64, d_sae=256, k=16, hook_layer=LAYER, seed=1)
