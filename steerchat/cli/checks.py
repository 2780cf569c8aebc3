"""Checks every command shares, so bad input is refused at once with one clear line.

- argparse `type=` functions that refuse bad numbers while the flags are parsed
  (`--threads -2`, `--lr nan`, `--seed 99999999999999999999999`, `--device quantum`);
- `output_folder` / `output_file`: an output path is checked before the work starts, so a
  long run never dies at its end on a path it cannot write;
- `read_stdin_text`: `steerchat ask -` reads standard input as UTF-8, with a clear error;
- `visible`: model text with its control characters made visible, for a terminal.

Pure Python: nothing here imports torch.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

SEED_MAX = 2**32 - 1
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class CLIError(Exception):
    """A fault in what the user gave; `steerchat.cli.main` prints it as `steerchat: <message>`."""


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text.strip())
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what} (it must be finite)")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 1")
    return value


def nonneg_int(text: str) -> int:
    """A whole number of at least 0."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number of at least 0")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _number(text, float, "a number")


def nonneg_float(text: str) -> float:
    """A finite number of at least 0."""
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of at least 0")
    return value


def nonpos_float(text: str) -> float:
    """A finite number of at most 0."""
    value = _number(text, float, "a number")
    if value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number of at most 0")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number above 0")
    return value


def probability(text: str) -> float:
    """A number in (0, 1]."""
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0 and at most 1")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _number(text, float, "a number")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 0 and below 1")
    return value


def percentile(text: str) -> float:
    """A number in [0, 100]."""
    value = _number(text, float, "a number")
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and 100")
    return value


def seed(text: str) -> int:
    """A random seed: 0 to 2**32 - 1 (what torch and numpy accept)."""
    value = _number(text, int, "a whole number")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed must be between 0 and {SEED_MAX}")
    return value


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps."""
    value = text.strip().lower()
    if not _DEVICE.match(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return value


def int_list(text: str, item: Callable[[str], int] = nonneg_int) -> list[int]:
    """Comma-separated whole numbers (each checked by `item`)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers")
    try:
        return [item(p) for p in parts]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers ({exc})") from None


def float_list(text: str, item: Callable[[str], float] = nonneg_float) -> list[float]:
    """Comma-separated numbers (each checked by `item`)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers")
    try:
        return [item(p) for p in parts]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers ({exc})") from None


# a list of numbers whose first is negative ("-1,-2"): argparse would take it for an option
_NEGATIVE_LIST = re.compile(r"^-\d*\.?\d+(\s*,\s*-?\d*\.?\d+)+$")


def join_negative_lists(argv: list[str]) -> list[str]:
    """`--open -1,-2` as `--open=-1,-2`: argparse reads a lone negative number as a value but a
    comma-separated list that starts with one as an unknown option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


# ------------------------------------------------------------------ output paths


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, not guessed: root ignores modes, /proc does not)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` is a folder we can write into, or one we can create; nothing is created here."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CLIError(f"{flag} {path}: is a file, not a folder; give a folder")
        if not _can_write_in(path):
            raise CLIError(f"{flag} {path}: cannot write into this folder; give another")
        return path
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise CLIError(f"{flag} {path}: {base} is a file, so no folder can be made there; give another path")
    if not _can_write_in(base):
        raise CLIError(f"{flag} {path}: cannot create a folder in {base}; give another path")
    return path


def output_file(path: str | Path, flag: str) -> Path:
    """`path` is a file we can (over)write, or one we can create; nothing is written here."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CLIError(f"{flag} {path}: is a folder, not a file; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise CLIError(f"{flag} {path}: cannot be written; give another file")
        return path
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        raise CLIError(f"{flag} {path}: {base} is a file, not a folder; give another path")
    if not _can_write_in(base):
        raise CLIError(f"{flag} {path}: cannot create a file in {base}; give another path")
    return path


# ------------------------------------------------------------------ standard input and output


def read_stdin_text() -> str:
    """All of standard input, decoded as UTF-8 (a BOM is dropped)."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes (tests, embedding): already decoded
        return sys.stdin.read()
    data = buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CLIError(f"standard input: not valid UTF-8 text (byte {exc.start + 1}, line {line}); "
                       "give a text prompt") from None


def visible(text: str) -> str:
    """`text` with every control character except newline and tab made visible (ESC → ␛)."""
    from steerchat.tui.sanitize import sanitize

    return sanitize(text)


def threads_arg(parser) -> None:
    """--threads, as every command that runs the model on the CPU takes it (applied with
    engine.runtime.threads.apply_threads when the work starts)."""
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: the cores idle when the run starts; a core busy "
                        "with other work would stall every step)")


def apply_threads_arg(args) -> int:
    """Give torch the --threads asked for, else the cores idle now; returns the count."""
    from steerchat.engine.runtime.threads import apply_threads

    return apply_threads(getattr(args, "threads", None))

