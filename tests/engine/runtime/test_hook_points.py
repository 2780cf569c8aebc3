"""Hook-point names → the decoder layer whose OUTPUT steerchat hooks, and the names it refuses."""

from __future__ import annotations

import json

import pytest

from steerchat.engine.core.api import SAEFileError
from steerchat.engine.runtime.sae import SAE, SAEConfig, layer_from_hook_name


@pytest.mark.parametrize("name, layer", [
    ("blocks.6.hook_resid_post", 6),
    ("blocks.0.hook_resid_post", 0),
    ("blocks.3.hook_resid_pre", 2),   # resid_pre of block 3 is the output of block 2
    ("blocks.12.hook_resid_pre", 11),
    ("model.layers.19", 19),          # Goodfire: the output of the decoder layer module
    ("model.layers.7.output", 7),
    ("model.model.layers.5", 5),
    ("transformer.h.4", 4),
    ("model.layers.4.input", 3),
    ("model.layers.4.input_layernorm.input", 3),
])
def test_hook_names_map_to_the_layer_whose_output_they_are(name, layer):
    assert layer_from_hook_name(name) == layer


@pytest.mark.parametrize("name, words", [
    ("blocks.0.hook_resid_pre", "embeddings"),
    ("blocks.3.hook_resid_mid", "not the residual stream after a decoder layer"),
    ("blocks.3.hook_attn_out", "not the residual stream"),
    ("blocks.3.hook_mlp_out", "not the residual stream"),
    ("blocks.3.attn.hook_z", "not the residual stream"),
    ("model.layers.3.mlp", "not the residual stream"),
    ("model.layers.3.self_attn", "not the residual stream"),
    ("model.layers.3.post_attention_layernorm", "not the residual stream"),
    ("model.layers.3.input_layernorm", "ambiguous"),
    ("model.layers.0.input", "embeddings"),
    ("ln_final.hook_normalized", "not the residual stream"),
    ("hook_embed", "not the residual stream"),
])
def test_hook_names_that_are_not_a_layer_output_are_refused(name, words):
    with pytest.raises(SAEFileError, match=words):
        layer_from_hook_name(name)


def _cfg(**kw):
    return {"d_in": 8, "d_sae": 16, "architecture": "relu", **kw}


def test_saelens_hook_layer_is_the_block_index_so_the_name_decides():
    # older SAELens configs carry hook_layer = N beside blocks.N.hook_resid_pre
    cfg = SAEConfig.from_json(_cfg(hook_name="blocks.3.hook_resid_pre", hook_layer=3), "x")
    assert cfg.hook_layer == 2
    cfg = SAEConfig.from_json(_cfg(metadata={"hook_name": "blocks.3.hook_resid_pre"}), "x")
    assert cfg.hook_layer == 2


def test_no_hook_name_and_no_hook_layer_is_refused_offering_the_flag():
    with pytest.raises(SAEFileError, match="--sae-layer"):
        SAEConfig.from_json(_cfg(), "x")
    with pytest.raises(SAEFileError, match="--sae-layer"):
        SAEConfig.from_json(_cfg(metadata={"hook_name": "my_custom_point"}), "x")


def test_a_plain_hook_layer_still_counts_without_a_name():
    assert SAEConfig.from_json(_cfg(hook_layer=5), "x").hook_layer == 5


def test_the_layer_override_wins(tmp_path):
    sae = SAE.random(d_in=8, d_sae=16, architecture="relu", seed=0)
    sae.save(tmp_path / "s")
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    for key in ("hook_layer", "hook_name"):
        raw.pop(key)
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(raw))
    with pytest.raises(SAEFileError, match="--sae-layer"):
        SAE.load(tmp_path / "s")
    assert SAE.load(tmp_path / "s", layer=4).cfg.hook_layer == 4
    with pytest.raises(SAEFileError, match="whole number"):
        SAE.load(tmp_path / "s", layer=-1)


def test_ask_takes_sae_layer_for_an_sae_that_names_no_layer(tiny_model_dir, tmp_path, capsys):
    from steerchat.cli.main import main

    sae = SAE.random(d_in=64, d_sae=128, k=8, seed=0)
    sae.save(tmp_path / "sae")
    raw = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    raw.pop("hook_layer"), raw.pop("hook_name")
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps(raw))
    base = ["ask", "hi", "--model", str(tiny_model_dir), "--sae", str(tmp_path / "sae"), "--max-tokens", "2"]
    assert main(base) == 1
    assert "--sae-layer" in capsys.readouterr().err
    assert main(base + ["--sae-layer", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"]
    assert main(base + ["--sae-layer", "7"]) == 1
    assert "hook layer 7 does not exist" in capsys.readouterr().err


def test_sae_layer_is_refused_for_commands_that_take_their_own_sae(capsys):
    from steerchat.cli.main import main

    with pytest.raises(SystemExit):
        main(["--sae-layer", "1", "paths"])
    assert "--sae-layer applies to the chat" in capsys.readouterr().err
