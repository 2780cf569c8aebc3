"""Model loading: local folders, 4-bit and 8-bit through bitsandbytes on the CPU, clear errors, the GGUF cache."""

from __future__ import annotations

import json

import pytest
import torch

from steerchat.engine.core.api import EngineError, ModelNotAvailable
from steerchat.engine.runtime.loading import cache_is_valid, convert_gguf, gguf_from_wheel, load_model, resolve
from tests.conftest import requires_starter


def test_loads_a_local_folder_in_float32(tiny_model_dir):
    lm = load_model(str(tiny_model_dir))
    assert lm.quant == "none" and lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert lm.num_layers == 2 and lm.d_model == 64
    assert lm.tokenizer.chat_template


def test_four_bit_nf4_loads_and_generates_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    lm = load_model(str(tiny_model_dir), quant="4bit")
    linear = lm.model.model.layers[0].mlp.down_proj
    assert isinstance(linear, bnb.nn.Linear4bit)
    assert linear.weight.quant_type == "nf4"
    ids = torch.tensor([lm.tokenizer.encode("hello")])
    out = lm.model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5


def test_eight_bit_loads(tiny_model_dir):
    import bitsandbytes as bnb

    lm = load_model(str(tiny_model_dir), quant="8bit")
    assert isinstance(lm.model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)


def test_auto_quant_on_cpu_is_plain_weights(tiny_model_dir):
    assert load_model(str(tiny_model_dir), quant="auto").quant == "none"


def test_missing_model_offline_is_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelNotAvailable) as err:
        load_model("phi-3-mini")
    msg = str(err.value)
    assert "microsoft/Phi-3-mini-4k-instruct is not in the Hugging Face cache" in msg
    assert "--model smollm2-135m" in msg
    assert "\n" not in msg


def test_bad_specs_have_clear_errors(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not a registered model"):
        resolve("no such thing")
    with pytest.raises(ModelNotAvailable, match="No GGUF file"):
        resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="has no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(EngineError, match="--quant must be one of"):
        load_model("smollm2-135m", quant="3bit")


def test_never_trusts_remote_code(tiny_model_dir, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **kw):
        seen.append(kw.get("trust_remote_code"))
        return real(*a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir))
    assert seen == [False]


@pytest.mark.slow
@requires_starter
def test_starter_converts_once_and_detects_a_corrupt_cache():
    lm = load_model("smollm2-135m")
    assert lm.num_layers == 30 and lm.d_model == 576
    folder = convert_gguf(gguf_from_wheel(lm.source))
    assert cache_is_valid(folder)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    # a partial write (truncated file) is not trusted
    with open(weights, "r+b") as fh:
        fh.truncate(size // 2)
    assert not cache_is_valid(folder)
    # and a corrupted manifest neither
    manifest = json.loads((folder / "steerchat-cache.json").read_text())
    assert manifest["files"]["model.safetensors"]["size"] == size
    rebuilt = convert_gguf(gguf_from_wheel(lm.source))
    assert rebuilt == folder and cache_is_valid(folder) and weights.stat().st_size == size
    again = load_model("smollm2-135m")
    ids = torch.tensor([again.tokenizer.encode("The capital of France is")])
    out = again.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in again.tokenizer.decode(out[0, ids.shape[1]:])


def _fake_conversion(cache, name, source, dtype=None, config_dtype="float32"):
    folder = cache / name
    folder.mkdir(parents=True)
    manifest = {"format": 1, "source": str(source), "files": {}}
    if dtype is not None:
        manifest["dtype"] = dtype
    (folder / "steerchat-cache.json").write_text(json.dumps(manifest))
    (folder / "config.json").write_text(json.dumps({"dtype": config_dtype}))
    return folder


def test_older_conversions_of_the_same_gguf_are_removed(tmp_path):
    """After a conversion, copies of the same GGUF in the same dtype (older cache formats, a
    replaced file) and copies of an assembled GGUF that is gone are removed; nothing else is."""
    from steerchat.engine.core.paths import get_paths
    from steerchat.engine.runtime.loading import _prune_stale_conversions

    cache = tmp_path / "models"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    ours = get_paths().cache_dir / "gguf"
    keep = _fake_conversion(cache, "m-new", gguf, "bfloat16")
    older = _fake_conversion(cache, "m-old", gguf, None, config_dtype="bfloat16")  # manifest without dtype
    other_dtype = _fake_conversion(cache, "m-f32", gguf, "float32")
    orphan = _fake_conversion(cache, "gone-abc", ours / "gone-0123456789ab.gguf", "bfloat16")
    elsewhere = _fake_conversion(cache, "x-abc", tmp_path / "missing-but-not-ours.gguf", "bfloat16")
    foreign = cache / "not-ours"
    foreign.mkdir()
    partial = cache / "m-new2.partial"
    partial.mkdir()
    _prune_stale_conversions(cache, keep, gguf, "bfloat16")
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (keep, other_dtype, elsewhere, foreign, partial))
    assert not older.exists() and not orphan.exists()


@pytest.mark.slow
@requires_starter
def test_a_full_disk_is_one_clear_sentence_and_keeps_the_cached_model(monkeypatch):
    """Too little room is said before the weights are written; a disk that fills mid-write is
    said too; either way the cached conversion stays valid and no *.partial is left."""
    import shutil
    from collections import namedtuple

    import safetensors.torch

    from steerchat.models import STARTER, get_entry

    gguf = gguf_from_wheel(get_entry(STARTER).source)
    folder = convert_gguf(gguf)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(1 << 40, (1 << 40) - (300 << 20), 300 << 20))
    with pytest.raises(EngineError) as err:
        convert_gguf(gguf, force=True)
    assert str(err.value).startswith("Not enough disk space for converting SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "300 MB are free" in str(err.value)
    monkeypatch.setattr(shutil, "disk_usage", real)

    def full(*a, **k):
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(EngineError) as err:
        convert_gguf(gguf, force=True)
    assert str(err.value).startswith("The disk filled up while converting") and "\n" not in str(err.value)
    assert cache_is_valid(folder, full_check=True) and not list(folder.parent.glob("*.partial"))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_a_weight_that_is_not_finite_anywhere_is_found(bad):
    from steerchat.engine.runtime.loading import _finite

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4)).to(torch.bfloat16)
    with torch.no_grad():
        if bad is None:  # +inf and -inf in one tensor: their sum is NaN, still caught
            model[1].weight[0, 0], model[1].weight[3, 7] = float("inf"), float("-inf")
        else:
            model[1].weight[2, 5] = bad
    assert not _finite(model)
    assert _finite(torch.nn.Linear(8, 8).to(torch.bfloat16))
