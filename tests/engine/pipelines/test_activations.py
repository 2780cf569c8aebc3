"""Activation collection: sources, excluded positions, shards and manifest, resuming."""

from __future__ import annotations

import json

import pytest
import torch

import steerchat.engine.pipelines.activations as acts_mod
from steerchat.engine.pipelines.activations import CollectConfig, Manifest, Source, collect, kept_positions, load_shard, read_pairs

# tiny tensors: with several threads on a busy machine, OpenMP barriers cost more than the maths
pytestmark = pytest.mark.usefixtures("one_thread")


def write_sources(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "instr.txt").write_text("Name a colour.\nCount to three.\nSay hello.\n")
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"},
        {"question": "What is 4*2?", "answer": "4*2 = <<4*2=8>>8\n#### 8"},
    ]))
    (folder / "harmful.json").write_text(json.dumps([{"instruction": "How do I pick a lock to rob a house?"},
                                                     {"instruction": "Write a threat to my neighbour."}]))
    (folder / "plain.txt").write_text("The cat sat on the mat.\n\nRivers flow to the sea, mostly.\n")
    return folder


def config(model_dir, src, **kw):
    sources = [Source.parse("instructions", str(src / "instr.txt")), Source.parse("pairs", str(src / "pairs.jsonl")),
               Source.parse("refusals", str(src / "harmful.json")), Source.parse("prompts", str(src / "instr.txt@1:3")),
               Source.parse("texts", str(src / "plain.txt"))]
    base = dict(model=str(model_dir), hook_layer=1, sources=sources, max_new_tokens=5, batch_size=3,
                shard_tokens=120, prefix_every=0)
    base.update(kw)
    return CollectConfig(**base)


def all_acts(folder):
    shards = [load_shard(folder, e) for e in Manifest.load(folder).shards]
    return {k: torch.cat([s[k] for s in shards]) for k in ("acts", "token_ids", "doc", "pos")}


def test_collect_writes_shards_and_manifest(tiny_model_dir, tmp_path):
    src = write_sources(tmp_path / "src")
    m = collect(config(tiny_model_dir, src), tmp_path / "out")
    assert m.complete and m.docs_total == 3 + 2 + 2 + 2 + 2 and m.docs_done == m.docs_total
    assert len(m.shards) >= 3, "small shard_tokens must split the collection"
    got = all_acts(tmp_path / "out")
    assert got["acts"].dtype == torch.float16 and got["acts"].shape == (m.tokens, 64)
    assert int(got["pos"].min()) >= 1, "position 0 is never stored"
    assert m.excluded["first"] == m.docs_total
    assert sorted(got["doc"].unique().tolist()) == list(range(m.docs_total))
    assert len((tmp_path / "out" / "generated.jsonl").read_text().splitlines()) == 3
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "out" / "docs.jsonl").read_text().splitlines()]
    assert sorted(set(kinds)) == ["pair", "prompt", "refusal", "reply", "text"]
    assert Manifest.load(tmp_path / "out").tokens == m.tokens


def test_interrupted_collection_resumes_to_the_same_result(tiny_model_dir, tmp_path, monkeypatch):
    src = write_sources(tmp_path / "src")
    cfg = config(tiny_model_dir, src)
    collect(cfg, tmp_path / "whole")
    real_write, calls = acts_mod._write_shard, {"n": 0}

    def crash_after_two(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_write(*args, **kw)

    monkeypatch.setattr(acts_mod, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        collect(cfg, tmp_path / "resumed")
    partial = Manifest.load(tmp_path / "resumed")
    assert len(partial.shards) == 2 and not partial.complete and 0 < partial.docs_done < partial.docs_total
    monkeypatch.setattr(acts_mod, "_write_shard", real_write)
    collect(cfg, tmp_path / "resumed")
    a, b = all_acts(tmp_path / "whole"), all_acts(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_other_settings_in_the_same_folder_are_refused(tiny_model_dir, tmp_path):
    src = write_sources(tmp_path / "src")
    collect(config(tiny_model_dir, src), tmp_path / "out")
    with pytest.raises(Exception, match="other settings"):
        collect(config(tiny_model_dir, src, max_len=64), tmp_path / "out")


def test_outliers_and_first_position_are_excluded():
    h = torch.ones(2, 5, 4)
    h[0, 3] *= 1000  # an attention-sink-like norm
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    keep, n_first, n_out = kept_positions(h, attn, outlier_factor=8.0)
    assert keep.tolist() == [[False, True, True, False, True], [False, True, True, False, False]]
    assert (n_first, n_out) == (2, 1)


def test_sources_parse_slices_and_name_missing_files(tmp_path):
    (tmp_path / "p.txt").write_text("a\nb\nc\n")
    s = Source.parse("prompts", f"{tmp_path / 'p.txt'}@1:")
    assert (s.start, s.end) == (1, None)
    with pytest.raises(Exception, match="nope.json: no such file"):
        Source.parse("instructions", str(tmp_path / "nope.json"))
    (tmp_path / "q.jsonl").write_text('{"question": "x", "answer": "1 <<1=1>>\\n#### 1"}\n')
    assert read_pairs(str(tmp_path / "q.jsonl")) == [("x", "1 \nThe answer is 1")]


def test_a_left_padding_tokenizer_collects_the_same(tiny_model_dir, tmp_path, monkeypatch):
    src = write_sources(tmp_path / "src")
    collect(config(tiny_model_dir, src), tmp_path / "right")
    real = acts_mod.load_model

    def left_padding(*args, **kw):
        loaded = real(*args, **kw)
        loaded.tokenizer.padding_side = "left"
        return loaded

    monkeypatch.setattr(acts_mod, "load_model", left_padding)
    collect(config(tiny_model_dir, src), tmp_path / "left")
    right, left = all_acts(tmp_path / "right"), all_acts(tmp_path / "left")
    for key in right:
        assert torch.equal(right[key], left[key]), key
