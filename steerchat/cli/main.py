"""The `steerchat` command line. Parses flags, then imports only what the command needs,
so `steerchat --help` answers without loading torch or Textual."""

from __future__ import annotations

import argparse
import importlib
import sys

from steerchat.cli.checks import join_negative_lists

# subcommand modules, each with register(subparsers) and run(args)
COMMAND_MODULES = (
    "steerchat.cli.ask",
    "steerchat.cli.models",
    "steerchat.cli.sae",
    "steerchat.cli.features",
    "steerchat.cli.align",
    "steerchat.cli.eval",
    "steerchat.cli.prepare",
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
    parser.add_argument("--level", "-l", help="safety level, one of the model's (e.g. Open, Off, Guided, Low, Medium, "
                        "Max; the slider shows them)", **kw)
    parser.add_argument("--system", "-s", help="system prompt", **kw)
    parser.add_argument("--adapter", help="LoRA adapter folder from `steerchat align`", **kw)
    parser.add_argument("--quant", choices=("auto", "4bit", "8bit", "int8", "none"), **(kw or {"default": None}),
                        help="quantisation (default auto: 4-bit NF4 on CUDA where the registry says so; on the "
                        "CPU int8 weights where the registry measured them faster, else plain weights). "
                        "4bit/8bit: bitsandbytes; int8: weight-only int8 linear layers for CPU decoding")


def open_engine_session(model: str, **kwargs):
    """The chat's session factory: the real engine, imported here, in the app's loading worker,
    so neither `--help` nor the UI's modules import torch."""
    from steerchat.engine.runtime.session import open_session

    return open_session(model, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(join_negative_lists(sys.argv[1:] if argv is None else list(argv)))
    if getattr(args, "sae_layer", None) is not None:  # travels inside the --sae spec to chat and ask
        if args.sae_layer < 0:
            parser.error("--sae-layer must be 0 or more")
        if args.command not in (None, "ask"):
            parser.error("--sae-layer applies to the chat and `steerchat ask`")
        args.sae = f"{getattr(args, 'sae', None) or 'auto'}#layer={args.sae_layer}"
    try:
        if args.command is None:
            from steerchat.tui.app import run_chat

            return run_chat(model=args.model, sae=args.sae, level=args.level, system=args.system,
                            session_factory=open_engine_session, adapter=args.adapter, quant=args.quant)
        return args.run(args)
    except BrokenPipeError:  # `steerchat models | head`: the reader left; nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\nsteerchat: stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback (unless STEERCHAT_DEBUG asks for one)
        return report_error(exc)


DEBUG_ENV = "STEERCHAT_DEBUG"  # set to 1 to see the full traceback of an unexpected error


def error_message(exc: BaseException) -> str | None:
    """The one-line text of an expected fault (bad input, a file that cannot be read or
    written), or None for an unexpected one."""
    from steerchat.cli.checks import CLIError
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.levels import LevelError

    if isinstance(exc, (CLIError, EngineError, LevelError)):
        text = str(exc)
    elif isinstance(exc, UnicodeDecodeError):
        text = f"not valid UTF-8 text ({exc.reason} at byte {exc.start + 1})"
    elif isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror or exc}"
    elif isinstance(exc, ValueError):
        text = str(exc)
    else:
        return None
    return " ".join(text.split()) or type(exc).__name__


def report_error(exc: BaseException) -> int:
    """Print `exc` as one `steerchat: ...` line on stderr and return exit status 1."""
    import os

    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        raise exc
    text = error_message(exc)
    if text is None:
        tb, where = exc.__traceback__, ""
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" in {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
        detail = " ".join(str(exc).split())
        text = (f"unexpected error{where}: {type(exc).__name__}" + (f": {detail}" if detail else "")
                + f"; run again with {DEBUG_ENV}=1 to see the full traceback")
    print(f"steerchat: {text}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
