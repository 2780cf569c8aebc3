"""Chat widgets: the prompt box, a user message, a streaming assistant message, the log.

All text is shown literally: user text goes through `Text` (no Rich markup), replies go
through Markdown after `sanitize`, so neither markup nor escape sequences take effect.
"""

from __future__ import annotations

from rich.text import Text
from steerchat.engine.core.loops import LOOP_GUARD_MESSAGE
from steerchat.engine.core.trace import TurnTrace
from steerchat.tui.sanitize import sanitize
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

NEWLINE_KEYS = ("shift+enter", "ctrl+j")
MAX_INPUT_CHARS = 100_000  # far above any model's context; a bigger paste is cut, with a notice

# What a failed turn says, by the kind of failure (matched in the error text), each with what to do next.
_PLAIN_ERRORS = (
    (("outofmemory", "out of memory", "cuda oom"),
     "The GPU ran out of memory. Start a new chat (Ctrl+L), send a shorter message or pick a smaller model (F5)."),
    (("memoryerror",), "The computer ran out of memory. Close other programs or pick a smaller model (F5)."),
    (("connectionerror", "timeout", "timed out"),
     "A download or connection failed. Check the network, then press Ctrl+R to try again."),
    (("filenotfounderror", "no such file"),
     "A model or SAE file is missing. Run `steerchat prepare` again, then restart the chat."),
    (("permissionerror", "permission denied"), "A file could not be read or written. Check its permissions and try again."),
    (("keyboardinterrupt", "cancelled"), "The reply was stopped. Press Ctrl+R to write it again."),
)
_GENERIC_ERROR = "Something went wrong while writing the reply. Press Ctrl+R to try again, or start a new chat (Ctrl+L)."


def plain_error(error: str | None) -> str | None:
    """A failed turn's error as a sentence that says what to do next (no exception class names).

    An engine error meant for the user (no "SomeError: " prefix) is kept as it is.
    """
    if not error:
        return error
    head = error.split(":", 1)[0].strip().rsplit(".", 1)[-1]
    if ":" not in error or not head.isidentifier() or not head.endswith(("Error", "Exception", "Interrupt")):
        return error  # already a sentence for the user
    low = error.lower().replace(" ", "")
    for needles, sentence in _PLAIN_ERRORS:
        if any(n.replace(" ", "") in low for n in needles):
            return sentence
    return _GENERIC_ERROR


def branch_label(branch: tuple[int, int] | None) -> str:
    """'‹ 2/3 ›' for the second of three alternatives; '' when there is only one."""
    if not branch or branch[1] <= 1:
        return ""
    return f"‹ {branch[0]}/{branch[1]} ›"


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def timing_line(trace: TurnTrace | None) -> str:
    """The reply's footer: first token, tokens/s, reply tokens, prompt against the context, and
    why the reply ended early when the loop guard ended it."""
    if trace is None:
        return ""
    guard = [LOOP_GUARD_MESSAGE] if getattr(trace, "loop_stopped", False) else []
    t = trace.timings
    if not (t.first_token_s or t.tokens_per_s or t.reply_tokens or t.prompt_tokens):
        return " · ".join(guard)
    parts = ([f"first token {t.first_token_s:.2f} s"] if t.first_token_s > 0 else []) + (
        [f"{t.tokens_per_s:.1f} tok/s"] if t.tokens_per_s > 0 else []) + [_count(t.reply_tokens, "token")]
    context = getattr(t, "context_tokens", 0)
    if context:
        parts.append(f"prompt {t.prompt_tokens:,}/{context:,} tokens ({100 * t.prompt_tokens / context:.0f}%)")
    else:
        parts.append(f"prompt {_count(t.prompt_tokens, 'token')}")
    return " · ".join(parts + guard)


class MessageActions(Message):
    """A key on a focused message: edit it, delete it (the chat screen decides)."""

    def __init__(self, view, action: str) -> None:
        super().__init__()
        self.view = view
        self.action = action


class PromptInput(TextArea):
    """A multi-line prompt: Enter sends, Shift+Enter (or Ctrl+J) adds a newline."""

    class Submitted(Message):
        def __init__(self, prompt: "PromptInput", text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    async def _on_paste(self, event: events.Paste) -> None:
        """Insert a paste as literal text, cut to what the prompt may hold (with a notice)."""
        event.stop()
        event.prevent_default()
        if self.read_only:
            return
        room = MAX_INPUT_CHARS - len(self.text) + len(self.selected_text)
        # TextArea writes control characters to the terminal as they are, so an ESC…BEL in the
        # prompt box would start a real escape sequence (hiding the rest of the line): they are
        # kept as their visible pictures (ESC -> ␛), like everywhere else text is shown.
        text = sanitize(event.text.replace("\r\n", "\n").replace("\r", "\n"))
        if len(text) > room:
            self.notify(f"The paste was cut to {max(room, 0):,} of its {len(text):,} characters "
                        f"(the prompt holds at most {MAX_INPUT_CHARS:,}).", severity="warning", timeout=8)
            text = text[: max(room, 0)]
        if text and (result := self._replace_via_keyboard(text, *self.selection)):
            self.move_cursor(result.end_location)
            self.focus()

    async def _on_key(self, event: events.Key) -> None:
        if event.is_printable and len(self.text) >= MAX_INPUT_CHARS and not self.selected_text:
            event.stop()
            event.prevent_default()
            self.notify(f"The prompt holds at most {MAX_INPUT_CHARS:,} characters.", severity="warning")
            return
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


class UserMessage(Static, can_focus=True):
    """What the user sent, shown literally. Focused: e edits it (a new branch), Delete deletes it."""

    BINDINGS = [
        Binding("e", "act('edit')", "Edit", id="message.edit"),
        Binding("delete", "act('delete')", "Delete", id="message.delete"),
    ]

    DEFAULT_CSS = """
    UserMessage {
        margin: 1 8 0 0;
        padding: 0 1;
        border-left: thick $secondary;
        background: $boost;
    }
    UserMessage:focus { border-left: thick $accent; }
    """

    def __init__(self, text: str, message_id: int | None = None, *, parent_id: int | None = None,
                 branch: tuple[int, int] | None = None) -> None:
        shown = Text(sanitize(text))
        if label := branch_label(branch):  # one of several versions of this prompt (edits)
            shown = Text.assemble((f"{label}  edited versions · Alt+←/→\n", "bold cyan"), shown)
        super().__init__(shown)
        self.text = text
        self.message_id = message_id
        self.parent_id = parent_id
        self.branch = branch
        self.border_title = "You"

    def action_act(self, action: str) -> None:
        self.post_message(MessageActions(self, action))

    def on_click(self) -> None:
        self.focus()


class AssistantMessage(Vertical, can_focus=True):
    """One reply: a header (level, status, judge) over Markdown that can stream, and a footer
    with its speed and size. Focused: Delete deletes it (and what follows it)."""

    BINDINGS = [Binding("delete", "act('delete')", "Delete", id="message.delete_reply")]

    DEFAULT_CSS = """
    AssistantMessage {
        height: auto;
        margin: 1 0 0 0;
        padding: 0 1;
        border-left: thick $primary 50%;
    }
    AssistantMessage:focus, AssistantMessage.-selected {
        border-left: thick $accent;
        background: $boost;
    }
    AssistantMessage .header { color: $text-muted; }
    AssistantMessage .timings { color: $text-muted; height: auto; }
    AssistantMessage Markdown { margin: 0; padding: 0; background: transparent; }
    """

    class Selected(Message):
        def __init__(self, view: "AssistantMessage") -> None:
            super().__init__()
            self.view = view

    def __init__(
        self,
        prompt: str,
        turn_index: int,
        level: str,
        *,
        message_id: int | None = None,
        text: str = "",
        status: str = "streaming",
        trace: TurnTrace | None = None,
        flagged: bool = False,
        parent_id: int | None = None,
        branch: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.parent_id = parent_id  # the user message this reply answers
        self.branch = branch  # (which, of how many) alternative replies to that message
        self.prompt = prompt
        self.turn_index = turn_index
        # The level at the start, then every slider move.
        self.levels_seen = [trace.level] + [n for _, n in trace.level_changes] if trace else [level]
        self.message_id = message_id
        self.text = text
        self.status = status
        self.trace = trace
        self.flagged = flagged
        self.error: str | None = None  # why the turn failed when there is no trace to say it
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._header(), classes="header")
        # Model text must not open URLs by itself: a click copies the link instead.
        yield Markdown(sanitize(self.text), open_links=False)
        line = timing_line(self.trace)
        footer = Static(Text(line), classes="timings")
        footer.display = bool(line)
        yield footer

    def action_act(self, action: str) -> None:
        self.post_message(MessageActions(self, action))

    @property
    def level_label(self) -> str:
        names: list[str] = []
        for name in self.levels_seen:
            if not names or names[-1] != name:
                names.append(name)
        return " → ".join(names)

    @property
    def refused(self) -> bool:
        return bool(self.trace and self.trace.verdict and self.trace.verdict.refused)

    def _header(self) -> Text:
        head = Text("Assistant", style="bold")
        if label := branch_label(self.branch):
            head.append(f"  {label}", style="bold cyan")
        head.append(f"  level {self.level_label}", style="magenta")
        badges = {
            "streaming": ("  … writing", "italic"),
            "stopped": ("  ⏹ stopped", "bold yellow"),
            "interrupted": ("  ⚠ interrupted", "bold yellow"),
            "error": ("  ✖ error", "bold red"),
        }
        if self.status in badges:
            head.append(*badges[self.status])
        if self.refused:
            head.append("  ⛔ refused · F3 why", style="bold red")
        if self.trace and self.trace.error:
            head.append(f"  {sanitize(plain_error(self.trace.error))}", style="red")
        elif self.error:
            head.append(f"  {sanitize(plain_error(self.error))}", style="red")
        if self.flagged:
            head.append("  ⚑ flagged bad", style="bold yellow")
        return head

    def refresh_header(self) -> None:
        if self.is_mounted:
            self.query_one(".header", Static).update(self._header())
            footer, line = self.query_one(".timings", Static), timing_line(self.trace)
            footer.update(Text(line))
            footer.display = bool(line)

    def add_level(self, name: str) -> None:
        """The slider moved while this reply streams."""
        self.levels_seen.append(name)
        self.refresh_header()

    async def write(self, piece: str) -> None:
        """Append a streamed piece (sanitised) to the Markdown."""
        self.text += piece
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
        await self._stream.write(sanitize(piece))

    async def restart(self, level: str) -> None:
        """Empty the reply for a regenerate."""
        await self._stop_stream()
        self.text, self.trace, self.status, self.levels_seen = "", None, "streaming", [level]
        await self.query_one(Markdown).update("")
        self.refresh_header()

    async def _stop_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def finish(self, trace: TurnTrace | None, status: str, text: str | None = None) -> None:
        """The turn ended: settle the text, remember the trace, show the status."""
        await self._stop_stream()
        self.trace, self.status = trace, status
        if trace is not None:
            self.levels_seen = [trace.level] + [name for _, name in trace.level_changes]
        if text is not None and text != self.text:
            self.text = text
            await self.query_one(Markdown).update(sanitize(text))
        self.refresh_header()

    def on_markdown_link_clicked(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        self.app.copy_to_clipboard(event.href)
        self.notify(f"Link copied, not opened: {sanitize(event.href)}", markup=False)

    def on_focus(self) -> None:
        self.post_message(self.Selected(self))

    def on_click(self) -> None:
        self.focus()


class ChatLog(VerticalScroll):
    """The scrolling conversation; follows the newest text unless the user scrolled up."""

    DEFAULT_CSS = """
    ChatLog { padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.anchor()
