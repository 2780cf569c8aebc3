"""The SAE: encode/decode formulas per architecture, the SAELens layout, and each bad-file message."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from steerchat.engine.core.api import SAEFileError
from steerchat.engine.runtime.sae import SAE


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_encode_decode_follow_the_formulas(arch):
    sae = SAE.random(d_in=16, d_sae=48, architecture=arch, k=5, seed=2)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(16))
    x = torch.randn(3, 7, 16)
    z = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if arch == "relu":
        expected = torch.relu(z)
    elif arch == "jumprelu":
        expected = z * (z > sae.threshold)
    else:
        r = torch.relu(z)
        vals, idx = r.topk(5, dim=-1)
        expected = torch.zeros_like(r).scatter(-1, idx, vals)
    f = sae.encode(x)
    assert torch.allclose(f, expected)
    assert torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)
    if arch == "topk":
        assert int((f > 0).sum(-1).max()) <= 5


def test_activation_scale_normalises_input_and_rescales_output():
    sae = SAE.random(d_in=8, d_sae=16, architecture="relu", seed=0)
    sae.cfg.activation_scale = 10.0
    x = torch.randn(4, 8) * 10
    assert torch.allclose(sae.encode(x), torch.relu((x / 10 - sae.b_dec) @ sae.W_enc + sae.b_enc))
    f = sae.encode(x)
    assert torch.allclose(sae.decode(f), (f @ sae.W_dec + sae.b_dec) * 10)


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu"])
def test_save_load_round_trip(tmp_path, arch):
    sae = SAE.random(d_in=16, d_sae=32, architecture=arch, k=4, hook_layer=3, seed=5)
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 32 and cfg["architecture"] == arch and cfg["hook_layer"] == 3
    again = SAE.load(tmp_path / "s", expect_d_in=16)
    x = torch.randn(5, 16)
    assert torch.equal(again.encode(x), sae.encode(x))
    assert again.cfg.hook_layer == 3


def test_loads_a_saelens_style_config(tmp_path):
    sae = SAE.random(d_in=16, d_sae=32, architecture="relu", seed=1)
    sae.save(tmp_path / "s")
    cfg = {"d_in": 16, "d_sae": 32, "architecture": "standard", "dtype": "torch.float32",
           "metadata": {"hook_name": "blocks.6.hook_resid_post", "model_name": "phi-3"}}
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    loaded = SAE.load(tmp_path / "s")
    assert loaded.cfg.architecture == "relu" and loaded.cfg.hook_layer == 6 and loaded.cfg.model_name == "phi-3"


def _write(folder, cfg=None, tensors=None):
    folder.mkdir(parents=True, exist_ok=True)
    cfg = cfg or {"d_in": 4, "d_sae": 8, "architecture": "relu", "hook_layer": 0}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    if tensors is None:
        tensors = {"W_enc": torch.zeros(4, 8), "W_dec": torch.zeros(8, 4), "b_enc": torch.zeros(8), "b_dec": torch.zeros(4)}
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    return folder


def test_wrong_shape_names_file_and_tensor(tmp_path):
    folder = _write(tmp_path / "s", tensors={"W_enc": torch.zeros(4, 9), "W_dec": torch.zeros(8, 4),
                                             "b_enc": torch.zeros(8), "b_dec": torch.zeros(4)})
    with pytest.raises(SAEFileError, match=r"sae_weights\.safetensors: tensor 'W_enc' has shape \(4, 9\), expected \(4, 8\)"):
        SAE.load(folder)


def test_d_in_mismatch_with_model(tmp_path):
    folder = _write(tmp_path / "s")
    with pytest.raises(SAEFileError, match=r"cfg\.json: d_in is 4 but the model's residual stream has 576"):
        SAE.load(folder, expect_d_in=576)


def test_missing_tensor(tmp_path):
    folder = _write(tmp_path / "s", tensors={"W_enc": torch.zeros(4, 8), "W_dec": torch.zeros(8, 4), "b_enc": torch.zeros(8)})
    with pytest.raises(SAEFileError, match=r"sae_weights\.safetensors: tensor 'b_dec' is missing"):
        SAE.load(folder)


def test_jumprelu_needs_threshold(tmp_path):
    folder = _write(tmp_path / "s", cfg={"d_in": 4, "d_sae": 8, "architecture": "jumprelu", "hook_layer": 0})
    with pytest.raises(SAEFileError, match="'threshold' is missing"):
        SAE.load(folder)


def test_non_safetensors_file(tmp_path):
    folder = _write(tmp_path / "s")
    (folder / "sae_weights.safetensors").write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(SAEFileError, match=r"sae_weights\.safetensors: not a readable safetensors file"):
        SAE.load(folder)


def test_missing_weights_and_cfg(tmp_path):
    folder = _write(tmp_path / "s")
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFileError, match=r"sae_weights\.safetensors: missing"):
        SAE.load(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(SAEFileError, match=r"cfg\.json: missing"):
        SAE.load(folder)
    with pytest.raises(SAEFileError, match="no such SAE folder"):
        SAE.load(tmp_path / "nowhere")


def test_bad_cfg_json(tmp_path):
    folder = _write(tmp_path / "s")
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFileError, match=r"cfg\.json: not valid JSON"):
        SAE.load(folder)
    (folder / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "architecture": "topk", "hook_layer": 0}))
    with pytest.raises(SAEFileError, match="a topk SAE needs an integer 'k'"):
        SAE.load(folder)
    (folder / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 8, "architecture": "gated", "hook_layer": 0}))
    with pytest.raises(SAEFileError, match="architecture 'gated' is not one of"):
        SAE.load(folder)


def test_a_single_file_is_not_an_sae(tmp_path):
    f = tmp_path / "weights.pt"
    f.write_bytes(b"whatever")
    with pytest.raises(SAEFileError, match=r"weights\.pt: an SAE is a folder"):
        SAE.load(f)


def test_nan_weights_are_refused(tmp_path):
    bad = torch.zeros(4, 8)
    bad[0, 0] = float("nan")
    folder = _write(tmp_path / "s", tensors={"W_enc": bad, "W_dec": torch.zeros(8, 4), "b_enc": torch.zeros(8), "b_dec": torch.zeros(4)})
    with pytest.raises(SAEFileError, match="NaN"):
        SAE.load(folder)
