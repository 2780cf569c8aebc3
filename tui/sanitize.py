"""Make model and user text safe to show: literal, never styling or moving the terminal.

Rich markup is neutralised by rendering through `Text`/`Content` (never markup strings);
this module handles the other half: terminal escape sequences and control characters.
Each control character becomes its visible Unicode "control picture" (ESC -> U+241B),
so `\\x1b[2J` shows as `␛[2J` instead of clearing the screen, and nothing is silently lost.
"""

from __future__ import annotations

import re

# C0 controls except tab and newline, DEL, and the C1 range (8-bit CSI etc.).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


def _picture(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return chr(0x2400 + code)  # U+2400.. CONTROL PICTURES
    if code == 0x7F:
        return "\u2421"  # ␡
    return "\ufffd"  # C1 controls have no picture


# Bidirectional formatting controls (LRM/RLM, embeddings, overrides, isolates, ALM): in a
# list row an RLO (U+202E) reverses what follows it and shifts the columns.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Everything `escape_controls` writes as a code point: C0 but tab and newline, DEL, C1, bidi.
_ESCAPED = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _codepoint(match: re.Match[str]) -> str:
    return f"\u27e8U+{ord(match.group()):04X}\u27e9"  # ⟨U+202E⟩


def no_bidi(text: str) -> str:
    """`text` with every bidi control shown as its code point (⟨U+202E⟩), so it cannot reorder a row."""
    return _BIDI.sub(_codepoint, text)


def escape_controls(text: str) -> str:
    """Every control character but newline and tab (C0, DEL, C1, bidi) as a visible ⟨U+XXXX⟩.

    Unlike `sanitize` nothing is merged or replaced by U+FFFD, so each character can be read
    back from the result (exports).
    """
    return _ESCAPED.sub(_codepoint, text)


def sanitize(text: str) -> str:
    """Return `text` with every control character except newline and tab made visible."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub(_picture, text)


def one_line(text: str, limit: int = 60) -> str:
    """A sanitised single-line preview (titles, list rows), cut to `limit` characters."""
    flat = " ".join(no_bidi(sanitize(text)).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
