"""Sparse autoencoders over a model's residual stream, in the SAELens folder layout.

    z     = (x / scale - b_dec) @ W_enc + b_enc        pre-activation
    f     = topk(relu(z)) | relu(z) | z * (z > threshold)
    x_hat = (f @ W_dec + b_dec) * scale

On disk an SAE is a folder holding `cfg.json` and `sae_weights.safetensors` (`W_enc`
d_in x d_sae, `W_dec` d_sae x d_in, `b_enc`, `b_dec`, and `threshold` for jumprelu), so
public SAELens SAEs load as they are. Pickles are never loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from steerchat.engine.core.api import SAEFileError

ARCHITECTURES = ("topk", "relu", "jumprelu")
CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = 32
    hook_layer: int = 0
    hook_name: str = ""
    model_name: str = ""
    dtype: str = "float32"
    # SAELens' "expected_average_only_in": inputs were scaled so E||x|| = sqrt(d_in)
    normalize_activations: str = "none"
    activation_scale: float = 1.0  # x is divided by this before encoding
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        if not d["hook_name"]:
            d["hook_name"] = f"blocks.{self.hook_layer}.hook_resid_post"
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str, layer_override: int | None = None) -> "SAEConfig":
        """Read our cfg.json or a SAELens one (which nests some keys and names them differently).

        The hook layer comes from the hook point's name (see `resolve_hook_layer`), else from
        `hook_layer`; `layer_override` (the user's `--sae-layer`) wins over both."""
        d = dict(d)
        meta = d.get("metadata") or {}
        try:
            d_in, d_sae = int(d["d_in"]), int(d["d_sae"])
        except (KeyError, TypeError, ValueError):
            raise SAEFileError(f"{where}: cfg.json must give integer 'd_in' and 'd_sae'") from None
        arch = str(d.get("architecture", "topk" if d.get("k") else "relu")).lower()
        if arch == "standard":
            arch = "relu"
        if arch not in ARCHITECTURES:
            raise SAEFileError(f"{where}: architecture {arch!r} is not one of {', '.join(ARCHITECTURES)}")
        k = d.get("k")
        if arch == "topk":
            if not isinstance(k, int) or not 0 < k <= d_sae:
                raise SAEFileError(f"{where}: a topk SAE needs an integer 'k' between 1 and d_sae ({d_sae}), got {k!r}")
        layer = d.get("hook_layer", meta.get("hook_layer"))
        hook_name = str(d.get("hook_name", meta.get("hook_name", "")) or "")
        layer = resolve_hook_layer(hook_name, layer, where, override=layer_override)
        if isinstance(layer, str) and layer.strip().isdigit():
            layer = int(layer)
        elif isinstance(layer, float) and layer.is_integer():
            layer = int(layer)
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise SAEFileError(f"{where}: 'hook_layer' must be a whole number of at least 0, got {layer!r}")
        scale = d.get("activation_scale", 1.0)
        try:
            ok = not isinstance(scale, bool) and 0 < float(scale) < float("inf")  # NaN compares false
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SAEFileError(f"{where}: 'activation_scale' must be a finite number above 0 (inputs are divided "
                               f"by it), got {scale!r}")
        known = {f for f in cls.__dataclass_fields__}
        extra = {k_: v for k_, v in d.items() if k_ not in known and k_ != "metadata"}
        return cls(
            d_in=d_in,
            d_sae=d_sae,
            architecture=arch,
            k=k if arch == "topk" else None,
            hook_layer=int(layer),
            hook_name=hook_name,
            model_name=str(d.get("model_name", meta.get("model_name", ""))),
            dtype=str(d.get("dtype", "float32")).replace("torch.", ""),
            normalize_activations=str(d.get("normalize_activations", "none") or "none"),
            activation_scale=float(d.get("activation_scale", 1.0)),
            extra=extra,
        )


# ---- hook points
#
# steerchat's hook sits on the OUTPUT of decoder layer L (the residual stream after block L).
# Published SAEs name their hook point in TransformerLens terms (`blocks.N.hook_resid_post`,
# `blocks.N.hook_resid_pre` = the output of block N-1) or as a Hugging Face module path
# (`model.layers.N` = its output). Anything that is not the residual stream after a layer
# (resid_mid, attention or MLP outputs, normalised inputs, the embeddings) is refused:
# steering there through this hook would read and write the wrong vector.

_TL = re.compile(r"^blocks\.(\d+)\.(.+)$")
# HF module paths: model.layers.N, model.model.layers.N, transformer.h.N, gpt_neox.layers.N, layers.N
_HF = re.compile(r"^(?:[A-Za-z_]+\.)*(?:layers|h|blocks|layer)\.(\d+)(?:\.(.+))?$")
_NOT_RESIDUAL = ("resid_mid", "attn", "mlp", "hook_z", "hook_q", "hook_k", "hook_v", "ln", "norm",
                 "hook_pattern", "hook_scale", "hook_normalized", "transcoder")
LAYER_HINT = "pass the decoder layer whose output it reads with --sae-layer N"


def layer_from_hook_name(name: str, where: str = "SAE") -> int | None:
    """The decoder layer whose output the hook point `name` is, None when `name` names no layer.

    Raises SAEFileError for a hook point steerchat cannot hook (not the residual stream after a
    decoder layer, or the embeddings)."""
    name = name.strip()
    if not name:
        return None
    m = _TL.match(name)
    if m:
        n, point = int(m.group(1)), m.group(2)
        if point == "hook_resid_post":
            return n
        if point == "hook_resid_pre":
            if n == 0:
                raise SAEFileError(f"{where}: hook point {name!r} is the embeddings (the input of block 0); "
                                   "steerchat hooks the output of a decoder layer and cannot steer there")
            return n - 1
        raise SAEFileError(f"{where}: hook point {name!r} is not the residual stream after a decoder layer "
                           "(steerchat hooks blocks.N.hook_resid_post or blocks.N+1.hook_resid_pre); "
                           "this SAE reads another vector and cannot be used for steering here")
    m = _HF.match(name)
    if m:
        n, rest = int(m.group(1)), m.group(2) or ""
        if rest in ("", "output", "hook_point_out", "out"):
            return n
        if rest in ("input", "hook_point_in", "in", "input_layernorm.input"):
            if n == 0:
                raise SAEFileError(f"{where}: hook point {name!r} is the input of the first layer (the "
                                   "embeddings); steerchat hooks the output of a decoder layer and cannot steer there")
            return n - 1
        if rest == "input_layernorm":
            raise SAEFileError(f"{where}: hook point {name!r} is ambiguous: its input is the residual stream "
                               f"before layer {n} but its output is normalised; if the SAE reads the input, "
                               f"{LAYER_HINT} (here {n - 1})")
        raise SAEFileError(f"{where}: hook point {name!r} ({rest}) is not the residual stream after a decoder "
                           "layer; steerchat hooks a layer's output (model.layers.N) and cannot steer there")
    if any(word in name for word in _NOT_RESIDUAL) or name.startswith(("hook_embed", "embed")):
        raise SAEFileError(f"{where}: hook point {name!r} is not the residual stream after a decoder layer")
    return None


def resolve_hook_layer(hook_name: str, hook_layer: Any, where: str, override: int | None = None) -> int:
    """The decoder layer an SAE's hook sits on (its output), from the config's hook name and
    hook_layer, or the user's override. A name steerchat reads decides: SAELens' `hook_layer`
    is the block index of the hook point, one more than steerchat's layer for resid_pre."""
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 0:
            raise SAEFileError(f"{where}: the layer override must be a whole number >= 0, got {override!r}")
        return override
    layer = layer_from_hook_name(hook_name, where)
    if layer is not None:
        return layer
    if hook_layer is None:
        what = f"hook_name {hook_name!r} names no decoder layer" if hook_name else "no 'hook_name'"
        raise SAEFileError(f"{where}: cfg.json gives no 'hook_layer' and {what}; {LAYER_HINT}")
    return hook_layer


class SAE(torch.nn.Module):
    """A sparse autoencoder; `encode` gives feature activations, `decode` reconstructs."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype = _DTYPES.get(cfg.dtype, torch.float32)
        self.W_enc = torch.nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.W_dec = torch.nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self.threshold = torch.nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype), requires_grad=False)
        self.name: str = ""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype) / self.cfg.activation_scale
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "jumprelu":
            return z * (z > self.threshold)
        acts = torch.relu(z)
        if arch == "topk":
            vals, idx = acts.topk(self.cfg.k, dim=-1, sorted=False)
            acts = torch.zeros_like(acts).scatter_(-1, idx, vals)
        return acts

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations for inputs x (..., d_in) -> (..., d_sae)."""
        return self.activate(self.pre_activation(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) * self.cfg.activation_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def decoder_directions(self, features: list[int]) -> torch.Tensor:
        """Rows of W_dec for `features`, in the model's residual units (times the activation scale)."""
        return self.W_dec[features] * self.cfg.activation_scale

    @classmethod
    def random(cls, d_in: int, d_sae: int, architecture: str = "topk", k: int | None = 8,
               hook_layer: int = 0, seed: int = 0) -> "SAE":
        """A randomly initialised SAE (unit-norm decoder rows, W_enc = W_dec^T), for tests and training."""
        cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=architecture,
                        k=k if architecture == "topk" else None, hook_layer=hook_layer)
        sae = cls(cfg)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            w = torch.randn(d_sae, d_in, generator=g)
            sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.01)
            if architecture == "jumprelu":
                sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.1)
        return sae

    # ---- files ----

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write `cfg.json` and `sae_weights.safetensors` into `folder`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dtype = dtype or self.W_enc.dtype
        tensors = {
            "W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec,
        }
        if self.cfg.architecture == "jumprelu":
            tensors["threshold"] = self.threshold
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
        cfg = self.cfg.to_json()
        cfg["dtype"] = str(dtype).replace("torch.", "")
        tmp = folder / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(folder / WEIGHTS_NAME)
        (folder / CFG_NAME).write_text(json.dumps(cfg, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, expect_d_in: int | None = None,
             layer: int | None = None) -> "SAE":
        """Load an SAELens-layout folder. Every fault raises SAEFileError naming the file.
        `layer` overrides the hook layer the config gives (or lacks)."""
        folder = Path(folder)
        if folder.is_file():
            raise SAEFileError(f"{folder}: an SAE is a folder holding {CFG_NAME} and {WEIGHTS_NAME}, not a single file")
        cfg_path, w_path = folder / CFG_NAME, folder / WEIGHTS_NAME
        if not folder.is_dir():
            raise SAEFileError(f"{folder}: no such SAE folder")
        if not cfg_path.is_file():
            raise SAEFileError(f"{cfg_path}: missing; an SAE folder needs {CFG_NAME} and {WEIGHTS_NAME}")
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SAEFileError(f"{cfg_path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise SAEFileError(f"{cfg_path}: expected a JSON object")
        cfg = SAEConfig.from_json(raw, str(cfg_path), layer_override=layer)
        if expect_d_in is not None and cfg.d_in != expect_d_in:
            raise SAEFileError(
                f"{cfg_path}: d_in is {cfg.d_in} but the model's residual stream has {expect_d_in} dimensions; "
                "this SAE was trained for another model"
            )
        if not w_path.is_file():
            raise SAEFileError(f"{w_path}: missing")
        try:
            tensors = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise SAEFileError(f"{w_path}: not a readable safetensors file ({exc})") from None
        expected = {
            "W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in),
            "b_enc": (cfg.d_sae,), "b_dec": (cfg.d_in,),
        }
        if cfg.architecture == "jumprelu":
            expected["threshold"] = (cfg.d_sae,)
        for name, shape in expected.items():
            if name not in tensors:
                raise SAEFileError(f"{w_path}: tensor {name!r} is missing (has: {', '.join(sorted(tensors)) or 'none'})")
            if tuple(tensors[name].shape) != shape:
                raise SAEFileError(
                    f"{w_path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape} "
                    f"from cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae})"
                )
            if not torch.isfinite(tensors[name].float()).all():
                raise SAEFileError(f"{w_path}: tensor {name!r} holds NaN or infinite values")
        cfg.dtype = str(dtype).replace("torch.", "")
        sae = cls(cfg)
        with torch.no_grad():
            for name in expected:
                getattr(sae, name).copy_(tensors[name].to(dtype))
        sae.name = folder.name if folder.name != "sae" else folder.parent.name
        return sae.to(device).requires_grad_(False)
