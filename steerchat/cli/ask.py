"""`steerchat ask`: one turn, scriptable. Streams the reply to stdout; `--json` prints the trace."""

from __future__ import annotations

import argparse
import json
import math
import sys

from steerchat.cli.checks import nonneg_float, positive_int, read_stdin_text, seed, visible


def register(sub) -> None:
    from steerchat.cli.main import add_chat_arguments

    p = sub.add_parser("ask", help="ask one question and print the reply (or the full trace with --json)",
                       description="Run one chat turn and print the reply. Reads stdin when PROMPT is '-'.")
    p.add_argument("prompt", help="the message to send ('-' reads it from standard input)")
    add_chat_arguments(p, sub=True)
    p.add_argument("--json", action="store_true", help="print the turn's full trace as JSON instead of the reply")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="most tokens to generate (default from config, 256)")
    p.add_argument("--temperature", type=nonneg_float, default=None,
                   help="0 for greedy (default from config, else the model's own, else greedy)")
    p.add_argument("--seed", type=seed, default=None, help="sampling seed (0 to 2**32-1)")
    p.add_argument("--no-loop-guard", dest="loop_guard", action="store_false", default=None,
                   help="let a reply that repeats itself run on to the token limit (the loop guard, on by "
                   "default, ends it; config: loop_guard under [sampling])")
    p.add_argument("--raw", action="store_true",
                   help="print the reply exactly as generated, control characters included (the default on a "
                   "terminal shows them visibly, e.g. ESC as ␛)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from steerchat.tui.config import load_config

    config, warning = load_config()
    if warning:
        print(f"steerchat: {warning}", file=sys.stderr)
    prompt = read_stdin_text() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        print("steerchat: the prompt is empty" + (" (nothing on standard input)" if args.prompt == "-" else ""),
              file=sys.stderr)
        return 1
    sampling = config.sampling
    if args.max_tokens is not None:
        sampling.max_new_tokens = args.max_tokens
    if args.temperature is not None:
        sampling.temperature = args.temperature
    if args.seed is not None:
        sampling.seed = args.seed
    if args.loop_guard is not None:
        sampling.loop_guard = args.loop_guard

    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.levels import LevelError
    from steerchat.engine.runtime.session import open_session

    def progress(p):
        if p.stage in ("download", "convert") or p.stage == "quantise":
            print(f"steerchat: {p.message}", file=sys.stderr)

    try:
        session = open_session(
            getattr(args, "model", None) or config.model,
            sae=getattr(args, "sae", None) or config.sae,
            adapter=getattr(args, "adapter", None) or config.adapter,
            level=getattr(args, "level", None) or config.level,
            system=getattr(args, "system", None) or config.system,
            quant=getattr(args, "quant", None) or config.quant,
            sampling=sampling, progress=progress,
        )
    except (EngineError, LevelError) as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1

    show = (lambda text: text) if args.raw or not sys.stdout.isatty() else visible
    stream = None if args.json else (lambda piece: (sys.stdout.write(show(piece)), sys.stdout.flush()))
    try:
        trace = session.send(prompt, on_token=stream)
    except KeyboardInterrupt:
        print("\nsteerchat: stopped", file=sys.stderr)
        return 130
    if args.json:
        print(strict_json(trace.to_json(indent=2)))
    else:
        print()
    if trace.error:
        print(f"steerchat: the reply broke off: {trace.error}", file=sys.stderr)
        return 1
    return 0


def strict_json(text: str) -> str:
    """`text` (JSON that may hold NaN or Infinity, which JSON does not allow) as strict JSON:
    a non-finite number becomes null."""

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(json.loads(text)), indent=2, ensure_ascii=False, allow_nan=False)


