"""LoRA adapters (from `steerchat align`) on top of a loaded chat model, through peft."""

from __future__ import annotations

from pathlib import Path

from steerchat.engine.core.api import EngineError


def attach_adapter(model, path: str | Path):
    """Wrap `model` with the LoRA adapter in `path`; returns (model, adapter name)."""
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise EngineError(f"{folder}: not an adapter folder (no adapter_config.json)")
    try:
        from peft import PeftModel
    except ImportError:
        raise EngineError("Adapters need peft: pip install 'steerchat[train]'") from None
    try:
        wrapped = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise EngineError(f"{folder}: cannot load this adapter onto the model ({str(exc).splitlines()[0]})") from None
    wrapped.eval()
    return wrapped, folder.name
