"""Published SAE layouts, loaded the way a real download is, and checked against SAELens itself.

tests/fixtures/saelens/ was written in a separate venv with sae-lens 6.54.12 (see VERSION):
  standard/ topk/ jumprelu/ resid_pre/ no_b_dec_in/  folders saved by SAELens' own save_model
  outputs.safetensors, published_outputs.safetensors  SAELens' encode/decode on the same x
  gemma-scope-2/resid_post/layer_1_width_16k_l0_small/  a Gemma Scope 2 replica (params.safetensors,
      config.json: the publisher's file and tensor names, shapes scaled down to d_in 8, d_sae 16)
  llama-scope/Llama3_1-8B-Base-L1R-8x/  a Llama Scope replica (hyperparams.json,
      checkpoints/final.safetensors)
The replicas' SAELens outputs come from SAELens' own loaders (gemma_3_sae_huggingface_loader,
llama_scope_sae_huggingface_loader with hf_hub_download pointed at the local files). No network here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from steerchat.engine.core.api import EngineError, SAEFileError
from steerchat.engine.runtime.sae import SAE
from steerchat.engine.runtime.sae_formats import (
    PublishedSAE, detect_format, install_published, load_folder, published_for, published_sae_dir,
)
from steerchat.models import get_entry

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "saelens"
OUT = load_file(str(FIX / "outputs.safetensors"))
PUB = load_file(str(FIX / "published_outputs.safetensors"))
X = OUT["x"]


@pytest.mark.parametrize("name", ["standard", "topk", "jumprelu"])
def test_saelens_saved_saes_encode_and_decode_bit_identically(name):
    for sae in (SAE.load(FIX / name), load_folder(FIX / name)):
        f = sae.encode(X)
        assert torch.equal(f, OUT[f"{name}.feature_acts"])
        assert torch.equal(sae.decode(f), OUT[f"{name}.decoded"])
        assert sae.cfg.hook_layer == 1


def test_a_saelens_resid_pre_sae_loads_one_layer_down():
    sae = load_folder(FIX / "resid_pre")
    assert json.loads((FIX / "resid_pre" / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.3.hook_resid_pre"
    assert sae.cfg.hook_layer == 2
    assert torch.equal(sae.encode(X), OUT["resid_pre.feature_acts"])


def test_apply_b_dec_to_input_false_is_folded_into_b_enc():
    # steerchat subtracts b_dec before encoding; b_enc' = b_enc + b_dec @ W_enc gives the same
    # pre-activation up to float rounding (a different summation order), so: close, not bit-identical
    sae = load_folder(FIX / "no_b_dec_in")
    f = sae.encode(X)
    assert torch.allclose(f, PUB["no_b_dec_in.feature_acts"], atol=1e-5)
    assert torch.equal(f > 0, PUB["no_b_dec_in.feature_acts"] > 0)
    assert torch.allclose(sae.decode(f), PUB["no_b_dec_in.decoded"], atol=1e-5)
    # plain SAE.load would ignore the flag: the difference is real
    assert not torch.allclose(SAE.load(FIX / "no_b_dec_in").encode(X), PUB["no_b_dec_in.feature_acts"], atol=1e-3)


def _hub_replica(cache: Path, repo: str, src: Path, dest: str) -> None:
    """A Hugging Face hub cache holding `src` at `dest` in `repo`, as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(src, root / "snapshots" / commit / dest, dirs_exist_ok=True)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.mark.parametrize("model, layout, src", [
    ("gemma-3-1b-it", "gemma-scope-2", "gemma-scope-2/resid_post/layer_1_width_16k_l0_small"),
    ("gemma-3-270m-it", "gemma-scope-2", "gemma-scope-2/resid_post/layer_1_width_16k_l0_small"),
    ("llama-3.1-8b-instruct", "llama-scope", "llama-scope/Llama3_1-8B-Base-L1R-8x"),
])
def test_registered_published_saes_download_convert_and_match_saelens(offline_hub, model, layout, src):
    entry = dataclasses.replace(get_entry(model), hook_layer=1)
    pub = published_for(entry)
    assert pub.format == layout
    if layout == "gemma-scope-2":  # the registry's template with {layer} filled; the replica is width 16k l0 small
        assert pub.path == "resid_post/layer_1_width_16k_l0_medium"
        pub = dataclasses.replace(pub, path="resid_post/layer_1_width_16k_l0_small")
    else:
        assert pub.path == "Llama3_1-8B-Base-L1R-8x"
    _hub_replica(offline_hub, pub.repo, FIX / src, pub.path)
    seen = []
    folder = install_published(pub, model, progress=seen.append)
    assert folder == published_sae_dir(model) and detect_format(folder) == "saelens"
    sae = SAE.load(folder)  # the converted folder is plain steerchat/SAELens layout
    assert sae.cfg.hook_layer == 1 and sae.cfg.architecture == "jumprelu"
    key = layout
    f = sae.encode(X)
    # folding b_dec into b_enc (and, for Llama Scope, keeping the norm scale apart instead of
    # folding it into W_enc) changes float rounding only
    assert torch.allclose(f, PUB[f"{key}.feature_acts"], atol=1e-5)
    assert torch.equal(f > 0, PUB[f"{key}.feature_acts"] > 0)
    assert torch.allclose(sae.decode(f), PUB[f"{key}.decoded"], atol=1e-5)
    assert torch.allclose(load_folder(offline_hub.glob(f"models--*/snapshots/*/{pub.path}").__next__()).encode(X), f)
    assert install_published(pub, model) == folder  # reused, not converted again


def test_offline_and_not_cached_says_so(offline_hub):
    pub = PublishedSAE("google/gemma-scope-2-1b-it", "resid_post/layer_13_width_16k_l0_medium", "gemma-scope-2")
    with pytest.raises(EngineError, match="offline"):
        install_published(pub, "gemma-3-1b-it")


def test_gemma_scope_folder_without_config_takes_the_layer_from_its_name(tmp_path):
    folder = tmp_path / "resid_post" / "layer_5_width_16k_l0_small"
    shutil.copytree(FIX / "gemma-scope-2/resid_post/layer_1_width_16k_l0_small", folder)
    (folder / "config.json").unlink()
    assert load_folder(folder).cfg.hook_layer == 5


def test_non_residual_published_saes_are_refused(tmp_path):
    folder = tmp_path / "transcoder" / "layer_1"
    shutil.copytree(FIX / "gemma-scope-2/resid_post/layer_1_width_16k_l0_small", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_out": "model.layers.1.post_feedforward_layernorm.output"}))
    with pytest.raises(SAEFileError, match="transcoder"):
        load_folder(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hf_hook_point_in": "model.layers.1.self_attn.o_proj.input"}))
    with pytest.raises(SAEFileError, match="not the residual stream"):
        load_folder(folder)
    saelens = tmp_path / "rescaled"
    shutil.copytree(FIX / "topk", saelens)
    cfg = json.loads((saelens / "cfg.json").read_text())
    (saelens / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    with pytest.raises(SAEFileError, match="rescale_acts_by_decoder_norm"):
        load_folder(saelens)


def test_fixtures_stay_small():
    assert sum(p.stat().st_size for p in FIX.rglob("*") if p.is_file()) < 200_000
