"""A causal LM's decoder layers: finding them, reading and replacing their output, and
running a model only as far as one of them.

Decoder layers return either a tensor or a tuple whose first item is the hidden state
(it differs across transformers versions and architectures); `layer_hidden` and
`with_hidden` are the one place that knows this.
"""

from __future__ import annotations

from typing import Any

import torch

# Where decoder layers live in Llama/Phi-3/Gemma/Qwen-style models, GPT-2-style and GPT-NeoX-style ones.
_LAYER_PATHS = ("model.layers", "model.model.layers", "transformer.h", "gpt_neox.layers", "layers")


def layer_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM, also under a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for path in _LAYER_PATHS:
        obj = base
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def decoder_layer(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    """Decoder layer number `layer` (0-based); a clear error when it does not exist."""
    layers = layer_list(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"hook layer {layer} is out of range: the model has {len(layers)} decoder layers")
    return layers[layer]


def layer_hidden(output: Any) -> torch.Tensor:
    """The hidden state (B, T, d) in a decoder layer's output."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The layer's output with its hidden state replaced, in the same shape (tensor or tuple)."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


class _Stop(Exception):
    """Raised by the capture hook: nothing past the layer is needed."""


def run_to_layer(model: torch.nn.Module, layer: int, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The output of decoder layer `layer` (B, T, d), running only the layers up to it.

    Hooks already on that layer (the steering hook, say) run first, so the capture sees
    their result and they see the whole prefill.
    """
    box: list[torch.Tensor] = []

    def grab(module, args, output):
        box.append(layer_hidden(output))
        raise _Stop

    handle = decoder_layer(model, layer).register_forward_hook(grab)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return box[0]
