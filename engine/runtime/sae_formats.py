"""Published SAEs in their publishers' own layouts, read into steerchat's `SAE`.

Each layout was read from SAELens' own loaders (sae-lens 6.54.12,
`sae_lens/loading/pretrained_sae_loaders.py`, and its `pretrained_saes.yaml` release list):

- ``saelens``: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc``
  d_in x d_sae, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``). Configs SAELens writes
  with ``apply_b_dec_to_input: false`` have b_dec folded into b_enc here (steerchat always
  subtracts b_dec before encoding); ``rescale_acts_by_decoder_norm``, reshaped (hook_z)
  inputs and a run-time activation normalisation without a stored scale are refused.
- ``gemma-scope-2`` (Google, e.g. ``google/gemma-scope-2-1b-it``): a folder such as
  ``resid_post/layer_13_width_16k_l0_medium`` holding ``params.safetensors`` (``w_enc``
  d_in x d_sae, ``w_dec`` d_sae x d_in, ``b_enc``, ``b_dec``, ``threshold``) and, for most
  SAEs, ``config.json`` (``architecture: jump_relu``, ``model_name``,
  ``hf_hook_point_in: model.layers.N.output``). JumpReLU with b_dec not subtracted from
  the input. Only ``resid_post`` folders are residual-stream SAEs steerchat can hook.
- ``llama-scope`` (OpenMOSS/fnlp, e.g. ``fnlp/Llama3_1-8B-Base-LXR-8x``): a folder such as
  ``Llama3_1-8B-Base-L15R-8x`` holding ``hyperparams.json`` (``d_model``, ``d_sae``,
  ``jump_relu_threshold``, ``dataset_average_activation_norm.in``, ``hook_point_in``) and
  ``checkpoints/final.safetensors`` (``encoder.weight`` d_sae x d_in, ``decoder.weight``
  d_in x d_sae, ``encoder.bias``, ``decoder.bias``). Inputs are normalised so that
  E||x|| = sqrt(d_in); one scalar threshold, scaled as SAELens scales it.

Downloads go through huggingface_hub into its cache (byte progress; HF_HUB_OFFLINE=1 reads
the cache only). The converted SAE is written once, in the SAELens layout steerchat loads,
under the user's data folder (`published_sae_dir`). Pickled weights (Goodfire's ``.pth``,
dictionary_learning's ``ae.pt``) are never loaded.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from steerchat.engine.core.api import EngineError, LoadProgress, ProgressCallback, SAEFileError
from steerchat.engine.core.paths import get_paths
from steerchat.engine.runtime.sae import CFG_NAME, SAE, WEIGHTS_NAME, SAEConfig, layer_from_hook_name

FORMATS = ("saelens", "gemma-scope-2", "llama-scope")
GEMMA_PARAMS = "params.safetensors"
GEMMA_CONFIG = "config.json"
LLAMA_SCOPE_HYPERPARAMS = "hyperparams.json"
LLAMA_SCOPE_WEIGHTS = "checkpoints/final.safetensors"
SOURCE_NAME = "source.json"  # written beside a converted SAE: where it came from


def detect_format(folder: Path) -> str:
    """Which published layout `folder` holds."""
    if (folder / CFG_NAME).is_file():
        return "saelens"
    if (folder / GEMMA_PARAMS).is_file():
        return "gemma-scope-2"
    if (folder / LLAMA_SCOPE_HYPERPARAMS).is_file():
        return "llama-scope"
    raise SAEFileError(f"{folder}: not an SAE folder steerchat knows (looked for {CFG_NAME}, {GEMMA_PARAMS} "
                       f"or {LLAMA_SCOPE_HYPERPARAMS})")


def load_folder(folder: str | Path, fmt: str | None = None, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, expect_d_in: int | None = None,
                layer: int | None = None) -> SAE:
    """Load an SAE folder in any known layout (detected unless `fmt` is given)."""
    folder = Path(folder)
    if folder.is_file() or not folder.is_dir():
        return SAE.load(folder, device=device, dtype=dtype, expect_d_in=expect_d_in, layer=layer)  # its message
    if fmt is None:
        try:
            fmt = detect_format(folder)
        except SAEFileError:  # no known layout: the SAELens loader names the missing file
            return SAE.load(folder, device=device, dtype=dtype, expect_d_in=expect_d_in, layer=layer)
    if fmt == "saelens":
        sae = _load_saelens(folder, dtype, expect_d_in, layer)
    elif fmt == "gemma-scope-2":
        sae = _load_gemma_scope(folder, dtype, layer)
    elif fmt == "llama-scope":
        sae = _load_llama_scope(folder, dtype, layer)
    else:
        raise SAEFileError(f"{folder}: unknown SAE format {fmt!r}; known: {', '.join(FORMATS)}")
    if expect_d_in is not None and sae.d_in != expect_d_in:
        raise SAEFileError(f"{folder}: d_in is {sae.d_in} but the model's residual stream has {expect_d_in} "
                           "dimensions; this SAE was trained for another model")
    if not sae.name:
        sae.name = folder.name if folder.name != "sae" else folder.parent.name
    return sae.to(device).requires_grad_(False)


# ---------------------------------------------------------------- readers


def _json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SAEFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise SAEFileError(f"{path}: expected a JSON object")
    return raw


def _tensors(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SAEFileError(f"{path}: missing")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SAEFileError(f"{path}: not a readable safetensors file ({exc})") from None
    for name, shape in expected.items():
        if name not in tensors:
            raise SAEFileError(f"{path}: tensor {name!r} is missing (has: {', '.join(sorted(tensors)) or 'none'})")
        if tuple(tensors[name].shape) != shape:
            raise SAEFileError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape}")
        if not torch.isfinite(tensors[name].float()).all():
            raise SAEFileError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors


def _build(cfg: SAEConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype, fold_b_dec: bool) -> SAE:
    """An SAE from steerchat-named tensors. `fold_b_dec`: the publisher encodes x @ W_enc + b_enc
    (b_dec not subtracted), which steerchat's (x - b_dec) @ W_enc + b_enc' equals with
    b_enc' = b_enc + b_dec @ W_enc (equal up to float rounding, not bit for bit)."""
    cfg.dtype = str(dtype).replace("torch.", "")
    sae = SAE(cfg)
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value.to(torch.float32).to(dtype))
        if fold_b_dec:
            w_enc, b_dec = weights["W_enc"].to(torch.float32), weights["b_dec"].to(torch.float32)
            sae.b_enc.copy_((weights["b_enc"].to(torch.float32) + b_dec @ w_enc).to(dtype))
    return sae


def _load_saelens(folder: Path, dtype: torch.dtype, expect_d_in: int | None, layer: int | None) -> SAE:
    raw = _json(folder / CFG_NAME)
    where = str(folder / CFG_NAME)
    if raw.get("rescale_acts_by_decoder_norm"):
        raise SAEFileError(f"{where}: rescale_acts_by_decoder_norm is set; steerchat reads SAEs whose "
                           "activations are not rescaled (fold the decoder norms with SAELens first)")
    if str(raw.get("reshape_activations", "none") or "none") != "none":
        raise SAEFileError(f"{where}: reshape_activations={raw['reshape_activations']!r} (an attention hook_z "
                           "SAE); steerchat hooks the residual stream")
    norm = str(raw.get("normalize_activations", "none") or "none")
    if norm != "none" and "activation_scale" not in raw:
        raise SAEFileError(f"{where}: normalize_activations={norm!r} needs a stored activation scale "
                           "(SAELens folds it with fold_activation_norm_scaling_factor); this file has none")
    sae = SAE.load(folder, dtype=dtype, expect_d_in=expect_d_in, layer=layer)
    if raw.get("apply_b_dec_to_input") is False:
        weights = {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "b_dec")}
        with torch.no_grad():
            sae.b_enc.copy_((weights["b_enc"].float() + weights["b_dec"].float() @ weights["W_enc"].float()).to(dtype))
        sae.cfg.extra["apply_b_dec_to_input"] = True  # folded: saved again, it must not be folded twice
    return sae


_GEMMA_LAYER = re.compile(r"layer_(\d+)")


def _load_gemma_scope(folder: Path, dtype: torch.dtype, layer: int | None) -> SAE:
    raw = _json(folder / GEMMA_CONFIG) if (folder / GEMMA_CONFIG).is_file() else {}
    where = str(folder / GEMMA_CONFIG) if raw else str(folder)
    arch = raw.get("architecture", "jump_relu")
    if arch != "jump_relu":
        raise SAEFileError(f"{where}: architecture {arch!r}; Gemma Scope 2 residual SAEs are jump_relu")
    hook = str(raw.get("hf_hook_point_in", "") or "")
    if raw.get("hf_hook_point_out"):
        raise SAEFileError(f"{where}: a transcoder (reads {hook}, writes {raw['hf_hook_point_out']}); "
                           "steerchat needs a residual-stream SAE (a resid_post folder)")
    if layer is None:
        layer = layer_from_hook_name(hook, where) if hook else None
    if layer is None:
        path = str(folder).replace(os.sep, "/")
        m = _GEMMA_LAYER.search(folder.name)
        if "resid_post" not in path or m is None:
            raise SAEFileError(f"{folder}: cannot tell the hook point (no {GEMMA_CONFIG} with hf_hook_point_in "
                               "and not a resid_post/layer_N_... folder); pass --sae-layer N if it reads the "
                               "output of decoder layer N")
        layer = int(m.group(1))
    head = _tensors(folder / GEMMA_PARAMS, {})
    if "w_enc" not in head:
        raise SAEFileError(f"{folder / GEMMA_PARAMS}: tensor 'w_enc' is missing (has: {', '.join(sorted(head))})")
    d_in, d_sae = head["w_enc"].shape
    t = _tensors(folder / GEMMA_PARAMS, {"w_enc": (d_in, d_sae), "w_dec": (d_sae, d_in), "b_enc": (d_sae,),
                                         "b_dec": (d_in,), "threshold": (d_sae,)})
    if bool((t["threshold"] < 0).any()):
        raise SAEFileError(f"{folder / GEMMA_PARAMS}: negative JumpReLU thresholds (steerchat's z·[z>θ] "
                           "equals the publisher's relu(z)·[z>θ] only for θ >= 0)")
    cfg = SAEConfig(d_in=int(d_in), d_sae=int(d_sae), architecture="jumprelu", k=None, hook_layer=int(layer),
                    hook_name=f"blocks.{layer}.hook_resid_post", model_name=str(raw.get("model_name", "")),
                    extra={"source_format": "gemma-scope-2"})
    weights = {"W_enc": t["w_enc"], "W_dec": t["w_dec"], "b_enc": t["b_enc"], "b_dec": t["b_dec"],
               "threshold": t["threshold"]}
    return _build(cfg, weights, dtype, fold_b_dec=True)


def _load_llama_scope(folder: Path, dtype: torch.dtype, layer: int | None) -> SAE:
    where = folder / LLAMA_SCOPE_HYPERPARAMS
    raw = _json(where)
    try:
        d_in, d_sae = int(raw["d_model"]), int(raw["d_sae"])
        threshold = float(raw["jump_relu_threshold"])
        avg_norm = float(raw["dataset_average_activation_norm"]["in"])
    except (KeyError, TypeError, ValueError):
        raise SAEFileError(f"{where}: needs d_model, d_sae, jump_relu_threshold and "
                           "dataset_average_activation_norm.in") from None
    if avg_norm <= 0 or threshold < 0:
        raise SAEFileError(f"{where}: dataset_average_activation_norm.in must be > 0 and the threshold >= 0")
    hook = str(raw.get("hook_point_in", "") or "")
    if hook and raw.get("hook_point_out", hook) != hook:
        raise SAEFileError(f"{where}: reads {hook} but writes {raw['hook_point_out']} (a transcoder); "
                           "steerchat needs a residual-stream SAE (an ...R... folder)")
    if layer is None:
        layer = layer_from_hook_name(hook, str(where))
    if layer is None:
        raise SAEFileError(f"{where}: no hook_point_in naming a layer; pass --sae-layer N")
    t = _tensors(folder / LLAMA_SCOPE_WEIGHTS, {"encoder.weight": (d_sae, d_in), "decoder.weight": (d_in, d_sae),
                                                "encoder.bias": (d_sae,), "decoder.bias": (d_in,)})
    # x is normalised to E||x|| = sqrt(d_in): divided by avg_norm / sqrt(d_in). SAELens folds that
    # factor into W_enc and multiplies the scalar threshold by it (get_llama_scope_config_from_hf); the
    # same encoding here keeps the scale separate and the threshold as SAELens scales it.
    factor = d_in ** 0.5 / avg_norm
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="jumprelu", k=None, hook_layer=int(layer),
                    hook_name=hook or f"blocks.{layer}.hook_resid_post", normalize_activations="expected_average_only_in",
                    activation_scale=1.0 / factor, extra={"source_format": "llama-scope"})
    weights = {"W_enc": t["encoder.weight"].T, "W_dec": t["decoder.weight"].T, "b_enc": t["encoder.bias"],
               "b_dec": t["decoder.bias"], "threshold": torch.full((d_sae,), threshold * factor)}
    return _build(cfg, weights, dtype, fold_b_dec=True)


# ---------------------------------------------------------------- published SAEs by name


@dataclass(frozen=True)
class PublishedSAE:
    """Where a published SAE lives on the hub and in which layout."""

    repo: str
    path: str  # folder inside the repo (the registry's sae_path, its {layer} filled in)
    format: str

    def files(self) -> list[str]:
        if self.format == "gemma-scope-2":
            return [f"{self.path}/{GEMMA_PARAMS}", f"{self.path}/{GEMMA_CONFIG}"]
        if self.format == "llama-scope":
            return [f"{self.path}/{LLAMA_SCOPE_HYPERPARAMS}", f"{self.path}/{LLAMA_SCOPE_WEIGHTS}"]
        if self.format == "saelens":
            return [f"{self.path}/{CFG_NAME}", f"{self.path}/{WEIGHTS_NAME}"]
        raise EngineError(f"unknown SAE format {self.format!r}; known: {', '.join(FORMATS)}")

    @property
    def optional(self) -> set[str]:
        return {f"{self.path}/{GEMMA_CONFIG}"} if self.format == "gemma-scope-2" else set()


def published_for(entry) -> PublishedSAE | None:
    """The published SAE a registry entry names (sae_repo, sae_path with {layer}, sae_format)."""
    repo = getattr(entry, "sae_repo", "")
    if not repo:
        return None
    path = entry.sae_hub_path.format(layer=entry.hook_layer)
    return PublishedSAE(repo, path.strip("/"), entry.sae_format or "saelens")


def published_sae_dir(name: str) -> Path:
    """Where a model's converted (or prepared) SAE is kept: <data>/models/<name>/sae."""
    return get_paths().data_dir / "models" / name / "sae"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download_published(pub: PublishedSAE, progress: ProgressCallback | None = None) -> Path:
    """Fetch a published SAE's files into the hub cache (byte progress); the folder holding them."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    class _Bar(tqdm):  # forwards the hub's byte counts
        def update(self, n=1):
            out = super().update(n)
            if progress:
                progress(LoadProgress("download", f"Downloading {pub.repo}/{pub.path}", float(self.n),
                                      float(self.total or 0) or None))
            return out

    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    folder: Path | None = None
    for filename in pub.files():
        try:
            kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": _offline()}
            try:
                got = hf_hub_download(pub.repo, filename, tqdm_class=_Bar, **kwargs)
            except TypeError:  # older huggingface_hub without tqdm_class on hf_hub_download
                got = hf_hub_download(pub.repo, filename, **kwargs)
        except LocalEntryNotFoundError:
            if filename in pub.optional and folder is not None:
                continue
            if _offline():
                raise EngineError(f"{pub.repo}/{filename} is not in the Hugging Face cache and steerchat is "
                                  "offline (HF_HUB_OFFLINE=1)") from None
            raise EngineError(f"Could not download {pub.repo}/{filename}; check the connection") from None
        except EntryNotFoundError:
            if filename in pub.optional:
                continue
            raise EngineError(f"{pub.repo} has no file {filename}") from None
        except RepositoryNotFoundError:
            raise EngineError(f"There is no repository {pub.repo} on the Hugging Face hub (or it is private)") from None
        except Exception as exc:  # network errors come in many types; one sentence for the user
            raise EngineError(f"Could not download {pub.repo}/{filename} ({type(exc).__name__})") from None
        if folder is None:
            folder = Path(got).parents[len(Path(filename).parts) - 1] / pub.path
    if folder is None:
        raise EngineError(f"{pub.repo}/{pub.path}: none of its files could be fetched")
    return folder


def install_published(pub: PublishedSAE, name: str, out: Path | None = None,
                      progress: ProgressCallback | None = None) -> Path:
    """Download a published SAE, convert it once into steerchat's layout under `out`
    (default `published_sae_dir(name)`); a finished conversion is reused."""
    out = Path(out) if out is not None else published_sae_dir(name)
    source = {"repo": pub.repo, "path": pub.path, "format": pub.format}
    marker = out / SOURCE_NAME
    if (out / CFG_NAME).is_file() and (out / WEIGHTS_NAME).is_file() and marker.is_file():
        try:
            if json.loads(marker.read_text()) == source:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    folder = download_published(pub, progress)
    if progress:
        progress(LoadProgress("sae", f"Converting {pub.repo}/{pub.path} ({pub.format})"))
    sae = load_folder(folder, pub.format)
    sae.cfg.extra = {**sae.cfg.extra, "source_repo": pub.repo, "source_path": pub.path}
    sae.save(out)
    marker.write_text(json.dumps(source, indent=2))
    return out
