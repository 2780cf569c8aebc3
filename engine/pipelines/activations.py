"""Collecting hook-layer activations for SAE training: chat text in, chunked shards out.

`collect()` turns sources into documents, runs them through the model up to the hook
layer and writes the residuals to `shard_NNNNN.safetensors` files (fp16 `acts`, int32
`token_ids`, `doc`, `pos`) listed in `manifest.json`. Nothing is held in memory beyond
one shard, and a run that stops resumes where it left off: generated replies are
appended to `generated.jsonl` batch by batch, and the manifest records how many
documents the written shards cover.

Sources (each a file, optionally sliced as ``FILE@START:END``):
  instructions  prompts (JSON/JSONL/CSV/text) answered by the model itself, greedy, in batches
  pairs         teacher-forced (question|instruction|prompt, answer|output|response|reply) rows
  refusals      harmful prompts with teacher-forced refusal replies (varied templates),
                so the model's refusal behaviour is represented
  prompts       prompts alone, rendered with the generation prompt
  texts         plain text files, split into paragraphs, no chat template

Excluded positions: position 0 of every sequence (an attention sink whose residual norm
is in the thousands) and any position whose norm exceeds `outlier_factor` times the
batch's median norm. The chat template's shared prefix (the default system prompt)
gives identical activations in every document, so it is kept in only one document in
`prefix_every`.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from steerchat.engine.core.api import DatasetError, EngineError
from steerchat.engine.core.config import CollectConfig
from steerchat.engine.core.datasets import load_pairs, load_prompts
from steerchat.engine.core.jsonl import read_jsonl
from steerchat.engine.core.levels import GUIDANCE_HINT, SafetySettings
from steerchat.engine.core.refusal_replies import REFUSAL_TEMPLATES
from steerchat.engine.runtime.batch import generate_batch, pad_batch, pad_id
from steerchat.engine.runtime.layers import run_to_layer
from steerchat.engine.runtime.loading import load_model
from steerchat.engine.runtime.steered import SteeredModel
from tqdm.auto import tqdm

MANIFEST = "manifest.json"
GENERATED = "generated.jsonl"
DOCS = "docs.jsonl"
FORMAT = 1
SOURCE_KINDS = ("instructions", "pairs", "refusals", "prompts", "texts")


@dataclass
class Source:
    kind: str
    path: str
    start: int = 0
    end: int | None = None

    @classmethod
    def parse(cls, kind: str, spec: str) -> "Source":
        """`FILE` or `FILE@START:END` (either bound may be empty)."""
        if kind not in SOURCE_KINDS:
            raise EngineError(f"unknown source kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
        path, start, end = spec, 0, None
        m = re.fullmatch(r"(.+)@(\d*):(\d*)", spec)
        if m:
            path = m.group(1)
            start = int(m.group(2) or 0)
            end = int(m.group(3)) if m.group(3) else None
        if not Path(path).is_file():
            raise EngineError(f"{path}: no such file (given as a {kind} source)")
        return cls(kind, str(Path(path).resolve()), start, end)


@dataclass
class Manifest:
    config: dict
    d_in: int
    docs_total: int = 0
    docs_done: int = 0
    shards: list[dict] = field(default_factory=list)
    excluded: dict = field(default_factory=lambda: {"first": 0, "outlier": 0, "prefix": 0})
    complete: bool = False
    format: int = FORMAT

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(folder / MANIFEST)  # atomic: a crash leaves the old manifest or the new one

    @classmethod
    def load(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise EngineError(f"{path}: missing; collect activations first with `steerchat sae collect`")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise EngineError(f"{path}: not a valid activations manifest ({exc})") from None


# ------------------------------------------------------------------ reading sources


def _slice(items: list, src: Source) -> list:
    return items[src.start : src.end]


def read_pairs(path: str) -> list[tuple[str, str]]:
    """(question, answer) rows for teacher forcing; GSM8K's <<calculator>> notes are removed
    and its final "#### N" reads "The answer is N"."""
    return [(p.prompt, re.sub(r"<<[^>]*>>", "", p.reply).replace("####", "The answer is").strip())
            for p in load_pairs(path)]


def read_prompts(path: str) -> list[str]:
    return [p.text for p in load_prompts(Path(path))]


def read_paragraphs(path: str) -> list[str]:
    """The paragraphs (blocks between blank lines) of a UTF-8 text file; DatasetError if it has none."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 text (byte {exc.start + 1}); give a plain text file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paragraphs:
        raise DatasetError(f"{path}: holds no text")
    return paragraphs


# ------------------------------------------------------------------ documents


def _generated(folder: Path) -> dict[str, str]:
    """Replies already generated (a line cut short by a crash is dropped and regenerated)."""
    path = folder / GENERATED
    if not path.is_file():
        return {}
    return {row["prompt"]: row["reply"] for row in read_jsonl(path, tolerate_torn_tail=True)}


def generate_replies(steered: SteeredModel, prompts: list[str], folder: Path, max_new_tokens: int,
                     batch_size: int) -> dict[str, str]:
    """The model's own greedy replies, appended to generated.jsonl a batch at a time (resumable)."""
    done = _generated(folder)
    todo = [p for p in dict.fromkeys(prompts) if p not in done]
    if todo:
        with open(folder / GENERATED, "a", encoding="utf-8") as fh, tqdm(
            total=len(todo), desc="generating replies", unit="prompt"
        ) as bar:
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                for r in generate_batch(steered, chunk, SafetySettings(), max_new_tokens, batch_size):
                    done[r.prompt] = r.reply
                    fh.write(json.dumps({"prompt": r.prompt, "reply": r.reply, "refused": r.verdict.refused}) + "\n")
                fh.flush()
                bar.update(len(chunk))
    return done


def build_documents(cfg: CollectConfig, replies: dict[str, str]) -> list[dict]:
    """Every document as {kind, messages | text}, shuffled with the seed so shards mix sources."""
    docs: list[dict] = []
    for src in cfg.sources:
        if src.kind == "instructions":
            for p in _slice(read_prompts(src.path), src):
                docs.append({"kind": "reply", "messages": [{"role": "user", "content": p},
                                                           {"role": "assistant", "content": replies[p]}]})
        elif src.kind == "pairs":
            for q, a in _slice(read_pairs(src.path), src):
                docs.append({"kind": "pair", "messages": [{"role": "user", "content": q},
                                                          {"role": "assistant", "content": a}]})
        elif src.kind == "refusals":
            for i, p in enumerate(_slice(read_prompts(src.path), src)):
                reply = REFUSAL_TEMPLATES[i % len(REFUSAL_TEMPLATES)]
                docs.append({"kind": "refusal", "messages": [{"role": "user", "content": p},
                                                             {"role": "assistant", "content": reply}]})
        elif src.kind == "prompts":
            for p in _slice(read_prompts(src.path), src):
                docs.append({"kind": "prompt", "messages": [{"role": "user", "content": p}]})
        else:
            for t in _slice(read_paragraphs(src.path), src):
                docs.append({"kind": "text", "text": t})
    random.Random(cfg.seed).shuffle(docs)
    n_chat = 0
    for d in docs:
        if "messages" in d:
            if cfg.guidance_every and n_chat % cfg.guidance_every == 0:
                d["messages"].insert(0, {"role": "system", "content": GUIDANCE_HINT})
            n_chat += 1
    return docs


def render(tokenizer, doc: dict) -> str:
    if "text" in doc:
        return doc["text"]
    msgs = doc["messages"]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=msgs[-1]["role"] == "user")


# ------------------------------------------------------------------ the forward pass


def kept_positions(h: torch.Tensor, attn: torch.Tensor, outlier_factor: float) -> tuple[torch.Tensor, int, int]:
    """Mask (B, T) of positions to store: real tokens, not position 0, norm within
    `outlier_factor` x the batch median (attention sinks carry norms in the thousands)."""
    norms = h.norm(dim=-1)
    keep = attn.bool().clone()
    n_first = int(keep[:, 0].sum())
    keep[:, 0] = False
    median = norms[keep].median() if keep.any() else norms.new_tensor(1.0)
    outlier = keep & (norms > outlier_factor * median)
    return keep & ~outlier, n_first, int(outlier.sum())


def _write_shard(folder: Path, index: int, parts: dict[str, list[torch.Tensor]]) -> dict:
    name = f"shard_{index:05d}.safetensors"
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    tmp = folder / (name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(folder / name)
    return {"file": name, "tokens": int(tensors["acts"].shape[0])}


def collect(cfg: CollectConfig, out_dir: str | Path, loaded=None, device: str = "auto") -> Manifest:
    """Run the collection (or resume it) into `out_dir`; return the finished manifest."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / MANIFEST).is_file():
        manifest = Manifest.load(folder)
        if manifest.config != json.loads(json.dumps(cfg.key())):
            raise EngineError(
                f"{folder / MANIFEST}: this folder holds a collection with other settings; "
                "use another --out folder, or delete this one"
            )
        if manifest.complete:
            return manifest
    else:
        manifest = None
    loaded = loaded or load_model(cfg.model, device=device)
    tok, model = loaded.tokenizer, loaded.model
    if manifest is None:
        manifest = Manifest(config=json.loads(json.dumps(cfg.key())), d_in=loaded.d_model)
        manifest.save(folder)
    known = {s["file"] for s in manifest.shards}
    for stray in folder.glob("shard_*.safetensors*"):  # written after the last manifest update
        if stray.name not in known:
            stray.unlink()

    prompts = [p for s in cfg.sources if s.kind == "instructions" for p in _slice(read_prompts(s.path), s)]
    replies = generate_replies(SteeredModel(loaded), prompts, folder, cfg.max_new_tokens, cfg.gen_batch_size) if prompts else {}
    docs = build_documents(cfg, replies)
    if not docs:
        raise EngineError("the sources hold no documents to collect activations from; check the source files "
                          "and their @START:END slices")
    if not (folder / DOCS).is_file():
        with open(folder / DOCS, "w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps(d) + "\n")
    manifest.docs_total = len(docs)
    texts = [render(tok, d) for d in docs]
    prefix = _prefix_lengths(tok, docs, texts)

    parts: dict[str, list[torch.Tensor]] = {"acts": [], "token_ids": [], "doc": [], "pos": []}
    pending = 0
    bar = tqdm(total=len(docs), initial=manifest.docs_done, desc="collecting activations", unit="doc")
    i = manifest.docs_done
    while i < len(docs):
        batch = list(range(i, min(i + cfg.batch_size, len(docs))))
        enc = tok([texts[j] for j in batch], add_special_tokens=False, truncation=True, max_length=cfg.max_len)
        # right-padded whatever the tokenizer's own side: positions then line up with the documents
        padded = pad_batch(enc["input_ids"], pad_id(tok), "right", loaded.device)
        ids, attn = padded.input_ids, padded.attention_mask
        h = run_to_layer(model, cfg.hook_layer, ids, attn).float()
        keep, n_first, n_outlier = kept_positions(h, attn, cfg.outlier_factor)
        manifest.excluded["first"] += n_first
        manifest.excluded["outlier"] += n_outlier
        for row, j in enumerate(batch):
            n_prefix = prefix.get(_system_of(docs[j]), 0)
            if cfg.prefix_every and j % cfg.prefix_every and "messages" in docs[j]:
                manifest.excluded["prefix"] += int(keep[row, :n_prefix].sum())
                keep[row, :n_prefix] = False
        rows, cols = keep.nonzero(as_tuple=True)
        parts["acts"].append(h[rows, cols].to(torch.float16).cpu())
        parts["token_ids"].append(ids[rows, cols].to(torch.int32).cpu())
        parts["doc"].append(torch.tensor(batch, dtype=torch.int32)[rows.cpu()])
        parts["pos"].append(cols.to(torch.int32).cpu())
        pending += int(rows.numel())
        i = batch[-1] + 1
        bar.update(len(batch))
        if pending >= cfg.shard_tokens or i == len(docs):
            if pending:
                manifest.shards.append(_write_shard(folder, len(manifest.shards), parts))
            manifest.docs_done = i
            manifest.save(folder)
            parts = {k: [] for k in parts}
            pending = 0
    bar.close()
    manifest.complete = True
    manifest.save(folder)
    return manifest


def _system_of(doc: dict) -> str | None:
    msgs = doc.get("messages") or [{}]
    return msgs[0].get("content") if msgs[0].get("role") == "system" else None


def _prefix_lengths(tok, docs: list[dict], texts: list[str]) -> dict[str | None, int]:
    """Per system prompt, the tokens every chat document with it starts with (the template's prefix)."""
    groups: dict[str | None, list[list[int]]] = {}
    for d, t in zip(docs, texts):
        if "messages" in d and len(groups.setdefault(_system_of(d), [])) < 64:
            groups[_system_of(d)].append(tok(t, add_special_tokens=False)["input_ids"])
    out = {}
    for key, ids in groups.items():
        n = 0
        if len(ids) > 1:
            for column in zip(*ids):
                if len(set(column)) > 1:
                    break
                n += 1
        out[key] = n
    return out


# ------------------------------------------------------------------ reading shards


def load_shard(folder: str | Path, entry: dict) -> dict[str, torch.Tensor]:
    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise EngineError(f"{path}: listed in the manifest but missing")
    return load_file(str(path))
