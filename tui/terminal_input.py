"""Terminal input that keeps a paste inert and survives bytes that are not UTF-8.

Textual's `XTermParser` (textual/_xterm_parser.py, Textual 8.2) reads a bracketed paste
(ESC[200~ … ESC[201~) character by character with its escape-sequence machine still
running: an ESC inside the pasted text starts a "sequence" whose characters are taken out
of the paste buffer and, when the sequence is not understood (the next ESC, the length
limit or a timeout), re-issued as key presses (`reissue_sequence_as_keys`). So pasting
`a ESC ] 0 ; x 0x11 b` presses Ctrl+Q (0x11) and the text after the ESC is lost. The Linux
driver also decodes stdin with a strict UTF-8 decoder, so one stray 0x9b byte raises
UnicodeDecodeError and kills the input thread.

`SafeInputParser` cuts bracketed pastes out of the byte stream *before* Textual's parser
sees them and turns each into one `events.Paste` with the literal text; everything else
goes to Textual's parser unchanged. `SafeLinuxDriver` uses it with a decoder that turns
invalid UTF-8 into U+FFFD. The app installs the driver on Linux and macOS.
"""

from __future__ import annotations

import sys
import time
from codecs import getincrementaldecoder
from collections.abc import Iterable

from textual import constants, events
from textual._xterm_parser import XTermParser
from textual.message import Message

PASTE_START = "\x1b[200~"
PASTE_END = "\x1b[201~"


def _held_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (kept for the next read)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class SafeInputParser:
    """Wraps Textual's XTermParser; bracketed pastes never reach its key machine."""

    def __init__(self, debug: bool = False) -> None:
        self._xterm = XTermParser(debug)
        self._pending = ""  # a possible start of a paste marker, held until more input comes
        self._pending_since = 0.0
        self._in_paste = False
        self._paste: list[str] = []

    @property
    def terminal_size(self):  # the driver and tests may read what the parser learnt
        return self._xterm.terminal_size

    def _outside(self, text: str) -> list[Message]:
        return list(self._xterm.feed(text)) if text else []

    def feed(self, data: str) -> Iterable[Message]:
        out: list[Message] = []
        text = self._pending + data
        self._pending = ""
        if data == "":  # end of input: flush what is held
            if self._in_paste:
                out.append(events.Paste("".join(self._paste) + text))
                self._paste.clear()
                self._in_paste = False
                text = ""
            out += self._outside(text)
            out += list(self._xterm.feed(""))
            return out
        while text:
            if self._in_paste:
                end = text.find(PASTE_END)
                if end < 0:
                    keep = _held_suffix(text, PASTE_END)
                    self._paste.append(text[: len(text) - keep])
                    self._pending = text[len(text) - keep:]
                    break
                self._paste.append(text[:end])
                # Textual drops NUL from pastes (its issue 1661); so do we.
                out.append(events.Paste("".join(self._paste).replace("\x00", "")))
                self._paste.clear()
                self._in_paste = False
                text = text[end + len(PASTE_END):]
                continue
            start = text.find(PASTE_START)
            if start < 0:
                keep = _held_suffix(text, PASTE_START)
                out += self._outside(text[: len(text) - keep])
                self._pending = text[len(text) - keep:]
                if self._pending:
                    self._pending_since = time.monotonic()
                break
            out += self._outside(text[:start])
            self._in_paste = True
            text = text[start + len(PASTE_START):]
        return out

    def tick(self) -> Iterable[Message]:
        """Called regularly: a held partial marker that stayed alone is a key press after all (Esc)."""
        out: list[Message] = []
        if self._pending and not self._in_paste and time.monotonic() - self._pending_since >= constants.ESCAPE_DELAY:
            held, self._pending = self._pending, ""
            out += self._outside(held)
        out += list(self._xterm.tick())
        return out


def tolerant_decoder():
    """An incremental UTF-8 decoder that shows invalid bytes as U+FFFD instead of raising."""
    return getincrementaldecoder("utf-8")(errors="replace")


class InputDecoder:
    """Bytes from the terminal → Textual events: tolerant UTF-8, then `SafeInputParser`."""

    def __init__(self, debug: bool = False) -> None:
        self.parser = SafeInputParser(debug)
        self._decode = tolerant_decoder().decode

    def feed_bytes(self, data: bytes, final: bool = False) -> list[Message]:
        text = self._decode(data, final=final)
        return list(self.parser.feed(text)) if text else []

    def tick(self) -> list[Message]:
        return list(self.parser.tick())


def safe_driver_class():
    """The driver the app should use: Textual's Linux driver with safe input, or None (the default)."""
    if sys.platform == "win32":
        return None
    import os
    import selectors

    from textual._loop import loop_last
    from textual._parser import ParseError
    from textual.drivers.linux_driver import LinuxDriver

    class SafeLinuxDriver(LinuxDriver):
        """LinuxDriver whose input thread uses `InputDecoder` (same loop as Textual 8.2's)."""

        def run_input_thread(self) -> None:
            selector = selectors.SelectSelector()
            selector.register(self.fileno, selectors.EVENT_READ)
            fileno = self.fileno
            decoder = InputDecoder(self._debug)

            def process(selector_events, final: bool = False) -> None:
                for last, (_key, mask) in loop_last(selector_events):
                    if mask & selectors.EVENT_READ:
                        raw = os.read(fileno, 1024 * 4)
                        if not raw:
                            break
                        for event in decoder.feed_bytes(raw, final=final and last):
                            self.process_message(event)
                for event in decoder.tick():
                    self.process_message(event)

            try:
                while not self.exit_event.is_set():
                    process(selector.select(0.1))
                selector.unregister(self.fileno)
                process(selector.select(0.1), final=True)
            finally:
                selector.close()
                try:
                    decoder.parser.feed("")
                except (EOFError, ParseError):
                    pass

    return SafeLinuxDriver
