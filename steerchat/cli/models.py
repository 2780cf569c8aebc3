"""`steerchat models`, `steerchat download` and `steerchat paths`."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("models", help="list the registered models and what is shipped for each")
    p.set_defaults(run=run_models)
    p = sub.add_parser("download", help="download (or convert) a model now, with progress")
    p.add_argument("model", help="registry name or Hugging Face id")
    p.set_defaults(run=run_download)
    p = sub.add_parser("paths", help="print where steerchat keeps config, chats and caches")
    p.set_defaults(run=run_paths)


def run_models(args: argparse.Namespace) -> int:
    from steerchat.models import registry

    for entry in registry().values():
        sae = "SAE shipped" if entry.sae_path else "no SAE shipped"
        print(f"{entry.name:16} {entry.title}")
        print(f"{'':16} source: {entry.source}; layer {entry.hook_layer}; {sae}")
        print(f"{'':16} {entry.notes}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.runtime.loading import _download_with_progress as download
    from steerchat.engine.runtime.loading import convert_gguf, gguf_from_wheel, resolve

    try:
        name, source, _ = resolve(args.model)
        if source.startswith("gguf:"):
            folder = convert_gguf(gguf_from_wheel(source), lambda p: print(p.message, file=sys.stderr))
        else:
            folder = download(source, None)
    except EngineError as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


def run_paths(args: argparse.Namespace) -> int:
    from steerchat.engine.core.paths import get_paths

    p = get_paths()
    print(f"config   {p.config_file}")
    print(f"data     {p.history_db}")
    print(f"cache    {p.cache_dir}")
    try:
        print(f"hf cache {p.hf_cache()}")
    except ImportError:
        pass
    return 0
