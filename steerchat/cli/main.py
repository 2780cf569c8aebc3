"""The `steerchat` command line. Parses flags, then imports only what the command needs,
so `steerchat --help` answers without loading torch or Textual."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand modules, each with register(subparsers) and run(args)
COMMAND_MODULES = (
    "steerchat.cli.ask",
    "steerchat.cli.models",
    "steerchat.cli.sae",
    "steerchat.cli.features",
    "steerchat.cli.align",
    "steerchat.cli.eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steerchat",
        description="A local terminal chat whose safety you can turn up or down, and that shows "
        "which sparse-autoencoder features fired and why a reply was refused.",
        epilog="With no command, opens the chat. Offline, try --model smollm2-135m (the starter model).",
    )
    parser.add_argument("--version", action="version", version=f"steerchat {_version()}")
    add_chat_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from steerchat import __version__

    return __version__


def add_chat_arguments(parser: argparse.ArgumentParser, sub: bool = False) -> None:
    """Flags shared by the chat and `steerchat ask`.

    On a subcommand the defaults are suppressed, so `steerchat --model X ask` keeps X.
    """
    kw = {"default": argparse.SUPPRESS} if sub else {}
    parser.add_argument("--model", "-m", help="registry name, Hugging Face id, model folder or GGUF file "
                        "(default: from config.toml, else phi-3-mini)", **kw)
    parser.add_argument("--sae", help="SAE folder (SAELens layout); 'none' for no SAE; default: the model's shipped SAE", **kw)
    parser.add_argument("--sae-layer", type=int, metavar="N", help="decoder layer whose output the SAE reads, "
                        "for an SAE whose config names no layer (overrides the config)", **kw)
    parser.add_argument("--level", "-l", help="safety level: Off, Guided, Low, Medium, High, Max", **kw)
    parser.add_argument("--system", "-s", help="system prompt", **kw)
    parser.add_argument("--adapter", help="LoRA adapter folder from `steerchat align`", **kw)
    parser.add_argument("--quant", choices=("auto", "4bit", "8bit", "none"), **(kw or {"default": None}),
                        help="quantisation (default auto: 4-bit NF4 on CUDA where the registry says so, "
                        "plain weights on the CPU)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "sae_layer", None) is not None:  # travels inside the --sae spec to chat and ask
        if args.sae_layer < 0:
            parser.error("--sae-layer must be 0 or more")
        args.sae = f"{getattr(args, 'sae', None) or 'auto'}#layer={args.sae_layer}"
    if args.command is None:
        from steerchat.tui.app import run_chat

        return run_chat(model=args.model, sae=args.sae, level=args.level, system=args.system,
                        adapter=args.adapter, quant=args.quant)
    try:
        return args.run(args)
    except BrokenPipeError:  # `steerchat models | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
