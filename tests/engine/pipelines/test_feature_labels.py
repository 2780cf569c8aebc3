"""`label_features` on a hand-built collection whose answers are known: which features get a
label, what the label says for common, rare and never-firing features, and `--top all`."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

from steerchat.cli.features import _top
from steerchat.engine.pipelines.activations import DOCS, Manifest
from steerchat.engine.pipelines.feature_labels import NEVER_FIRED, label_features
from steerchat.engine.runtime.sae import SAE, SAEConfig

# tiny tensors: with several threads on a busy machine, OpenMP barriers cost more than the maths
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = ["<s>", "the", "a", "cat", "dog", "zebra", "yak", "owl"]
D = 6  # features = inputs: feature i fires with activation x[i] (ReLU, identity encoder)


class Tok:
    """The two tokenizer methods the labeller uses, over VOCAB."""

    def __len__(self) -> int:
        return len(VOCAB)

    def convert_ids_to_tokens(self, i: int) -> str:
        return VOCAB[i]

    def decode(self, ids: list[int]) -> str:
        return " ".join(VOCAB[i] for i in ids)


def _sae() -> SAE:
    sae = SAE(SAEConfig(d_in=D, d_sae=D, architecture="relu", k=None))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(D))
        sae.W_dec.copy_(torch.eye(D))
    return sae


def _collection(folder):
    """Two documents of 40 tokens (doc 0 a prompt, doc 1 a reply), in two shards.

    Feature 0 fires on every 'cat' (20x, activation 2, all in the prompt document);
    feature 1 on every 'dog' (20x, activation 1, in the reply document); feature 2 on both
    'the' and 'dog' positions weakly (40x, 0.1); feature 3 fires three times (rare): twice on
    'zebra' (1.0 each) and once on 'yak' (0.5); feature 4 never fires; feature 5 fires five
    times on 'owl' (exactly min_fires)."""
    folder.mkdir()
    ids, acts, doc, pos = [], [], [], []
    for d in (0, 1):
        for p in range(40):
            x = torch.zeros(D)
            if d == 0:
                t = 3 if p % 2 == 0 else 1  # cat / the
                if t == 3:
                    x[0] = 2.0
            else:
                t = 4 if p % 2 == 0 else 1  # dog / the
                if t == 4:
                    x[1] = 1.0
                x[2] = 0.1
            if d == 0 and p in (1, 3):
                t, x[3] = 5, 1.0  # zebra
            if d == 0 and p == 5:
                t, x[3] = 6, 0.5  # yak
            if d == 0 and p in (7, 9, 11, 13, 15):
                t, x[5] = 7, 0.3  # owl
            ids.append(t)
            acts.append(x)
            doc.append(d)
            pos.append(p + 1)
    acts_t, ids_t = torch.stack(acts), torch.tensor(ids, dtype=torch.int32)
    doc_t, pos_t = torch.tensor(doc, dtype=torch.int32), torch.tensor(pos, dtype=torch.int32)
    shards = []
    for i, sl in enumerate((slice(0, 50), slice(50, 80))):
        name = f"shard_{i:05d}.safetensors"
        save_file({"acts": acts_t[sl].contiguous(), "token_ids": ids_t[sl].contiguous(),
                   "doc": doc_t[sl].contiguous(), "pos": pos_t[sl].contiguous()}, str(folder / name))
        shards.append({"file": name, "tokens": sl.stop - sl.start})
    Manifest(config={}, d_in=D, docs_total=2, docs_done=2, shards=shards, complete=True).save(folder)
    (folder / DOCS).write_text(json.dumps({"kind": "prompt"}) + "\n" + json.dumps({"kind": "reply"}) + "\n")
    return folder


def test_default_top_labels_only_features_firing_often_enough(tmp_path):
    acts = _collection(tmp_path / "acts")
    labels, record = label_features(_sae(), acts, Tok(), top=4, progress=False)
    # as before: features with at least min_fires (5) fires, by activation mass (40, 20, 4, 1.5)
    assert list(labels) == [0, 1, 2, 5]
    assert labels == {0: "cat [prompt]", 1: "dog [reply]", 2: "dog / the [reply]", 5: "owl [prompt]"}
    assert [record[str(f)]["fires"] for f in labels] == [20, 20, 40, 5]
    assert [record[str(f)]["mass"] for f in labels] == [40.0, 20.0, 4.0, 1.5]
    assert all(record[str(f)]["status"] == "normal" for f in labels)
    assert record["0"]["kind_share"] == {"prompt": 1.0, "reply": 0.0}
    assert len(record["0"]["contexts"]) == 3 and all("[[cat]]" in c["text"] for c in record["0"]["contexts"])
    top2, _ = label_features(_sae(), acts, Tok(), top=2, progress=False)
    assert top2 == {0: "cat [prompt]", 1: "dog [reply]"}
    # a count past the common features goes on to the rare ones, then to those that never fired
    top5, _ = label_features(_sae(), acts, Tok(), top=5, progress=False)
    assert list(top5) == [0, 1, 2, 5, 3] and top5[3].startswith("rare: ")


def test_top_none_labels_every_feature_rare_and_dead_marked(tmp_path):
    acts = _collection(tmp_path / "acts")
    common, _ = label_features(_sae(), acts, Tok(), top=4, progress=False)
    labels, record = label_features(_sae(), acts, Tok(), top=None, progress=False)
    assert sorted(labels) == list(range(D)) and len(record) == D
    assert list(labels) == [0, 1, 2, 5, 3, 4]  # common by mass, then rare, then never fired
    assert {f: labels[f] for f in common} == common  # the common features' labels do not change
    assert labels[3] == "rare: zebra / yak"  # its tokens by mass: zebra 2.0, yak 0.5
    assert record["3"]["status"] == "rare" and record["3"]["fires"] == 3 and record["3"]["mass"] == 2.5
    assert [c["activation"] for c in record["3"]["contexts"]] == [1.0, 1.0, 0.5]
    assert labels[4] == NEVER_FIRED == "never fired in the labelling corpus"
    assert record["4"] == {"label": NEVER_FIRED, "status": "never fired", "fires": 0, "mass": 0.0,
                           "kind_share": {}, "contexts": []}
    statuses = [r["status"] for r in record.values()]
    assert statuses.count("normal") == 4 and statuses.count("rare") == 1 and statuses.count("never fired") == 1
    # a count at or above the SAE's width is the same as all; min_fires moves the rare line
    assert label_features(_sae(), acts, Tok(), top=D, progress=False)[0] == labels
    assert label_features(_sae(), acts, Tok(), top=1000, progress=False)[0] == labels
    strict, rec = label_features(_sae(), acts, Tok(), top=None, min_fires=6, progress=False)
    assert strict[5] == "rare: owl" and rec["5"]["status"] == "rare" and strict[0] == "cat [prompt]"


def test_top_flag_accepts_all_or_a_positive_count():
    assert _top("all") is None and _top("ALL") is None and _top("4608") == 4608
    for bad in ("0", "-3", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            _top(bad)
