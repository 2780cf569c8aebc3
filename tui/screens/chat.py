"""The chat screen: conversation, prompt, safety slider and the features panel.

One turn: the user message and an in-flight reply row are saved at once; a thread
worker calls the session and posts each token back as a message (thread-safe, in
order); the partial reply is saved every half second and the turn is finalised with its
trace. Esc sets the cancel event; the engine stops on the next token.
"""

from __future__ import annotations

import threading
import time

from rich.text import Text
from steerchat.engine.core.api import ChatSession, EngineError
from steerchat.engine.core.trace import TurnTrace
from steerchat.tui.sanitize import one_line, sanitize
from steerchat.tui.screens.prepare_offer import PrepareOfferScreen
from steerchat.tui.widgets.chat import (
    AssistantMessage,
    ChatLog,
    MessageActions,
    PromptInput,
    UserMessage,
    plain_error,
)
from steerchat.tui.widgets.features_panel import FeaturesPanel
from steerchat.tui.widgets.safety_slider import SafetySlider
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from steerchat.store import Store

SAVE_EVERY_S = 0.5
EMPTY_HINT = (
    "Ask anything. Enter sends; Shift+Enter or Ctrl+J adds a line; Esc stops a reply.\n"
    "Ctrl+S then ←/→ moves the safety slider, even while a reply is written.\n"
    "Select a reply to see its SAE features (F2 shows or hides them); F3 explains why it was (not) refused.\n"
    "Ctrl+O lists saved chats; F5 opens the settings; Ctrl+P opens the command palette."
)


class ChatScreen(Screen):
    """The main screen. The app gives it a session once the model has loaded."""

    BINDINGS = [
        Binding("escape", "cancel", "Stop", id="chat.cancel"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate"),
        Binding("f4,ctrl+t", "copy", "Copy reply", id="chat.copy"),
        Binding("f3,ctrl+g", "why", "Why refused", id="chat.why"),
        Binding("ctrl+b", "flag", "Flag bad", id="chat.flag"),
        Binding("ctrl+o", "chats", "Chats", id="chat.chats"),
        Binding("ctrl+l", "clear", "New chat", id="chat.clear"),
        Binding("ctrl+s", "focus_slider", "Safety", id="chat.slider"),
        Binding("f2", "toggle_features", "Features", id="chat.features"),
        Binding("ctrl+up", "select_turn(-1)", "Prev turn", show=False, id="chat.prev_turn"),
        Binding("ctrl+down", "select_turn(1)", "Next turn", show=False, id="chat.next_turn"),
        Binding("alt+left", "switch_branch(-1)", "‹ Branch", show=False, id="chat.prev_branch"),
        Binding("alt+right", "switch_branch(1)", "Branch ›", show=False, id="chat.next_branch"),
    ]

    DEFAULT_CSS = """
    ChatScreen #status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    ChatScreen #main { height: 1fr; }
    ChatScreen #left { width: 1fr; }
    ChatScreen PromptInput { height: auto; min-height: 3; max-height: 10; border: round $primary 60%; }
    ChatScreen PromptInput:focus { border: round $accent; }
    ChatScreen #empty { height: auto; padding: 1 2; }
    ChatScreen.-has-turns #empty { display: none; }
    ChatScreen.-narrow FeaturesPanel { display: none; }
    ChatScreen FeaturesPanel.-hidden { display: none; }
    """

    class Token(Message):
        def __init__(self, view: AssistantMessage, piece: str, turn: int = 0) -> None:
            super().__init__()
            self.view = view
            self.piece = piece
            self.turn = turn

    class TurnDone(Message):
        def __init__(self, view: AssistantMessage, trace: TurnTrace | None, error: str | None,
                     turn: int = 0) -> None:
            super().__init__()
            self.view = view
            self.trace = trace
            self.error = error
            self.turn = turn

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.session: ChatSession | None = None
        self.chat_id: int | None = None
        self.streaming: AssistantMessage | None = None
        self.selected: AssistantMessage | None = None
        self.cancel_event = threading.Event()
        self._last_save = 0.0
        self._turn = 0  # counts turns started; a turn stopped before its first token is let go
        self.editing: UserMessage | None = None  # the message an edit replaces (a new branch)
        self.focused_message: UserMessage | AssistantMessage | None = None
        self._confirm_delete: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("steerchat · loading…"), id="status")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield Static(Text(EMPTY_HINT, style="dim"), id="empty")
                yield ChatLog(id="log")
                yield SafetySlider(["Off"], id="slider")
                yield PromptInput(id="prompt", placeholder="Message the model. Enter sends, Shift+Enter or Ctrl+J adds a line.")
            yield FeaturesPanel(id="features")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # Stop is shown dimmed unless a reply is being written.
        if action == "cancel":
            return True if self.streaming is not None or self.editing is not None else None
        return True

    # session and status
    def attach(self, session: ChatSession) -> None:
        """Use `session` from now on: slider notches from its levels, history from the open chat."""
        self.session = session
        levels = session.levels.levels
        names = [lv.name for lv in levels]
        self.query_one(SafetySlider).set_levels(
            names, [lv.description for lv in levels], names.index(session.settings.level.name)
            if session.settings.level.name in names else 0,
        )
        session.set_history(self._history())
        self.update_status()
        self._offer_prepare(session)

    def _offer_prepare(self, session: ChatSession) -> None:
        """No SAE and none was refused on purpose (--sae none): say so and offer `steerchat prepare`."""
        config = getattr(self.app, "config", None)
        if session.sae_name is None and getattr(config, "sae", "auto") in (None, "auto"):
            self.app.push_screen(PrepareOfferScreen(getattr(config, "model", None) or session.model_name))

    def update_status(self) -> None:
        status = Text("steerchat", style="bold")
        if self.session is None:
            status.append(" · loading…")
        else:
            status.append(f" · {self.session.model_name} · SAE {self.session.sae_name or 'none'}")
            if self.session.adapter_name:
                status.append(f" · adapter {self.session.adapter_name}", style="bold yellow")
            status.append(f" · level {self.session.settings.level.name}", style="magenta")
        if self.chat_id is not None and (chat := self.store.chat(self.chat_id)):
            status.append(f" · {one_line(chat.title, 40)}")
        self.query_one("#status", Static).update(status)

    def _turns(self) -> list[AssistantMessage]:
        return list(self.query(AssistantMessage))

    def _history(self) -> list[tuple[str, str]]:
        return [(v.prompt, v.text) for v in self._turns()]

    def on_resize(self) -> None:
        self.set_class(self.size.width < 110, "-narrow")

    # sending
    async def on_prompt_input_submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text
        if not text.strip():
            return
        if self.session is None:
            self.notify("The model is still loading.", severity="warning")
            return
        if self.streaming is not None:
            self.notify("A reply is still being written; Esc stops it.", severity="warning")
            return
        event.prompt.clear()
        if self.editing is not None:
            await self._fork_at(self.editing)
            edited, self.editing = self.editing, None
            await self.send(text, parent=edited.parent_id)
            return
        # Awaited here, not in a worker: the screen handles no other message until the
        # turn has started, so a second Enter cannot start a second turn.
        await self.send(text)

    async def send(self, text: str, parent: int | None | object = ...) -> None:
        """Start a turn: save and show the prompt and an empty reply, then stream into it.

        `parent` (an edit): the message the new prompt follows, a new branch beside the edited one.
        """
        level = self.session.settings.level.name
        if self.chat_id is None:
            self.chat_id = self.store.new_chat(one_line(text, 50), self.session.model_name,
                                               self.session.sae_name, self.session.system_prompt)
        log = self.query_one(ChatLog)
        if parent is ...:  # after the last message of the branch on screen
            ids = [v.message_id for v in log.children if isinstance(v, (UserMessage, AssistantMessage))]
            parent = ids[-1] if ids else None
        user_id = self.store.add_message(self.chat_id, "user", text, level=level, parent=parent)
        reply_id = self.store.add_message(self.chat_id, "assistant", "", level=level, status="streaming")
        view = AssistantMessage(text, len(self._turns()), level, message_id=reply_id, parent_id=user_id)
        user = UserMessage(text, user_id, parent_id=parent, branch=self._branch_of(user_id))
        await log.mount_all([user, view])
        self.add_class("-has-turns")
        self._begin(view)
        self._run_turn(view, lambda on_token, cancel: self.session.send(text, on_token, cancel))
        self.update_status()

    def _begin(self, view: AssistantMessage) -> None:
        self._turn += 1
        self.streaming = view
        self.cancel_event = threading.Event()
        self._last_save = time.monotonic()
        self.query_one(ChatLog).anchor()
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="reply")
    def _run_turn(self, view: AssistantMessage, call) -> None:
        turn = self._turn
        try:
            trace = call(lambda piece: self.post_message(self.Token(view, piece, turn)), self.cancel_event)
        except EngineError as exc:
            self.post_message(self.TurnDone(view, None, str(exc), turn))
        except Exception as exc:  # an engine bug must not kill the UI or lose the partial reply
            self.post_message(self.TurnDone(view, None, f"{type(exc).__name__}: {exc}", turn))
        else:
            self.post_message(self.TurnDone(view, trace, None, turn))

    def _stale(self, message: Token | TurnDone) -> bool:
        # A turn the user stopped before its first token was settled at once; what its
        # worker reports afterwards (it may take long to notice the stop) is dropped.
        return message.turn != self._turn or message.view is not self.streaming

    async def on_chat_screen_token(self, message: Token) -> None:
        if self._stale(message):
            return
        await message.view.write(message.piece)
        now = time.monotonic()
        if now - self._last_save >= SAVE_EVERY_S and message.view.message_id is not None:
            self._last_save = now
            self.store.update_message(message.view.message_id, content=message.view.text)

    async def on_chat_screen_turn_done(self, message: TurnDone) -> None:
        if self._stale(message):
            return
        view, trace = message.view, message.trace
        if trace is None:
            status, text = "error", view.text
            view.error = message.error  # shown on the turn itself, not only in a toast
            self.notify(f"The reply failed. {sanitize(plain_error(message.error))}", severity="error",
                        timeout=8, markup=False)
        else:
            status = "error" if trace.error else "stopped" if trace.stopped else "ok"
            text = trace.reply if trace.reply or not view.text else view.text
        await view.finish(trace, status, text)
        if view.message_id is not None:
            self.store.update_message(
                view.message_id, content=text, status=status, level=view.level_label,
                trace_json=trace.to_json() if trace else None,
            )
        self.streaming = None
        self.refresh_bindings()
        self.select(view)

    # slider
    def on_safety_slider_changed(self, event: SafetySlider.Changed) -> None:
        if self.session is None:
            return
        # The engine reads settings at every step: this takes effect on the next token.
        self.session.settings = self.session.settings.with_level(self.session.levels.get(event.name))
        if self.streaming is not None:
            self.streaming.add_level(event.name)
        self.update_status()

    def action_focus_slider(self) -> None:
        self.query_one(SafetySlider).focus()

    # turn actions
    def select(self, view: AssistantMessage | None) -> None:
        """Make `view` the selected turn and show its features."""
        for other in self._turns():
            other.set_class(other is view, "-selected")
        self.selected = view
        panel = self.query_one(FeaturesPanel)
        panel.set_history([v.trace for v in self._turns()])
        if view is None:
            panel.show(None, "Select a reply to see its features.")
        elif view.trace is None:
            panel.show(None, f"No trace for this reply ({view.status}).")
        else:
            panel.show(view.trace)

    def on_assistant_message_selected(self, event: AssistantMessage.Selected) -> None:
        self.select(event.view)

    def action_select_turn(self, step: int) -> None:
        turns = self._turns()
        if not turns:
            return
        index = turns.index(self.selected) + step if self.selected in turns else len(turns) - 1
        view = turns[max(0, min(index, len(turns) - 1))]
        self.select(view)
        view.scroll_visible()

    def _target(self) -> AssistantMessage | None:
        turns = self._turns()
        return self.selected if self.selected in turns else (turns[-1] if turns else None)

    async def action_cancel(self) -> None:
        view = self.streaming
        if view is None:
            if self.editing is not None:
                self.editing = None
                self.query_one(PromptInput).clear()
                await self.load_chat(self.chat_id)
                self.notify("Edit cancelled.")
            return
        self.cancel_event.set()
        if not view.text:
            # Nothing streamed yet: the engine may still be preparing a huge prompt and see
            # the stop only much later, so the turn is settled now and its worker let go.
            self._turn += 1
            self.streaming = None
            await view.finish(None, "stopped", "")
            if view.message_id is not None:
                self.store.update_message(view.message_id, content="", status="stopped")
            self.refresh_bindings()
            self.select(view)

    async def action_regenerate(self) -> None:
        turns = self._turns()
        if self.session is None or not turns:
            return
        if self.streaming is not None:
            self.notify("Wait for the reply to finish, or press Esc.", severity="warning")
            return
        await self._regenerate(turns[-1])

    async def _regenerate(self, view: AssistantMessage) -> None:
        # The old reply stays, with its trace, level and verdict: the new one is an alternative
        # beside it (Alt+←/→ browses them).
        level = self.session.settings.level.name
        await view.restart(level)
        if self.chat_id is not None and view.parent_id is not None:
            view.message_id = self.store.add_message(self.chat_id, "assistant", "", level=level,
                                                     status="streaming", parent=view.parent_id)
            view.branch = self._branch_of(view.message_id)
            view.refresh_header()
        elif view.message_id is not None:
            self.store.update_message(view.message_id, content="", status="streaming")
        self._begin(view)
        self._run_turn(view, lambda on_token, cancel: self.session.regenerate(on_token, cancel))

    def action_copy(self) -> None:
        view = self._target()
        if view is None:
            return
        self.app.copy_to_clipboard(view.text)
        self.notify("Reply copied.")

    def action_copy_prompt(self) -> None:
        view = self.focused_message if isinstance(self.focused_message, UserMessage) else None
        text = view.text if view is not None else (self._target().prompt if self._target() else None)
        if not text:
            self.notify("No prompt to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(text)
        self.notify("Prompt copied.")

    def action_copy_code(self) -> None:
        """Copy the last fenced code block of the selected reply (without its fences)."""
        import re

        view = self._target()
        blocks = re.findall(r"^(`{3,}|~{3,})[^\n]*\n(.*?)^\1[ \t]*$", view.text if view else "", re.M | re.S)
        if not blocks:
            self.notify("The selected reply has no code block; Ctrl+T copies the whole reply.", severity="warning")
            return
        self.app.copy_to_clipboard(blocks[-1][1].rstrip("\n"))
        self.notify("Code block copied.")

    def action_flag(self) -> None:
        view = self._target()
        if view is None or view.message_id is None:
            return
        view.flagged = not view.flagged
        self.store.set_flag(view.message_id, view.flagged)
        view.refresh_header()
        self.notify("Reply flagged as bad." if view.flagged else "Flag removed.")

    def action_why(self) -> None:
        from steerchat.tui.screens.why_refused import WhyRefusedScreen

        view = self._target()
        if view is None or view.trace is None:
            self.notify("No finished reply to explain.", severity="warning")
            return
        self.app.push_screen(WhyRefusedScreen(view.trace, view.turn_index, self.session))

    def action_toggle_features(self) -> None:
        panel = self.query_one(FeaturesPanel)
        if self.has_class("-narrow"):
            self.remove_class("-narrow")
            panel.remove_class("-hidden")
        else:
            panel.toggle_class("-hidden")

    def action_chats(self) -> None:
        self.app.action_chats()

    async def action_clear(self) -> None:
        """Start a fresh chat; the old one stays saved in the chat list."""
        if self.streaming is not None:
            self.notify("Wait for the reply to finish, or press Esc.", severity="warning")
            return
        await self.load_chat(None)

    async def load_chat(self, chat_id: int | None, focus: int | None = None) -> None:
        """Show saved chat `chat_id` (None: an empty new chat) and hand its history to the session.

        The branch on screen is the chat's current one; `focus` names a message to select.
        """
        log = self.query_one(ChatLog)
        await log.remove_children()
        self.chat_id = chat_id
        self.selected = None
        views: list = []
        prompt = ""
        dropped = 0
        self.editing = None
        if chat_id is not None:
            counts: dict[int | None, list[int]] = {}
            for row in self.store.messages(chat_id):
                counts.setdefault(row.parent_id, []).append(row.id)
            for row in self.store.branch(chat_id):
                same = counts.get(row.parent_id, [row.id])
                branch = (same.index(row.id) + 1, len(same)) if row.id in same else None
                if row.role == "user":
                    prompt = row.content
                    views.append(UserMessage(row.content, row.id, parent_id=row.parent_id, branch=branch))
                    continue
                try:
                    trace = TurnTrace.from_json(row.trace_json) if row.trace_json else None
                except Exception:  # damaged or from an incompatible version: show the text anyway
                    trace, dropped = None, dropped + 1
                views.append(AssistantMessage(
                    prompt, sum(isinstance(v, AssistantMessage) for v in views), row.level or "?",
                    message_id=row.id, text=row.content, status=row.status, trace=trace, flagged=row.flagged_bad,
                    parent_id=row.parent_id, branch=branch,
                ))
        await log.mount_all(views)
        if dropped:
            self.notify(f"{dropped} saved trace{'s' if dropped > 1 else ''} could not be read and "
                        f"{'were' if dropped > 1 else 'was'} dropped; the text is shown.", severity="warning")
        if self.session is not None:
            self.session.set_history(self._history())
        turns = self._turns()
        self.set_class(bool(views), "-has-turns")
        self.select(turns[-1] if turns else None)
        log.anchor()
        self.update_status()
        target = next((v for v in views if focus is not None and v.message_id == focus), None)
        if target is not None:
            if isinstance(target, AssistantMessage):
                self.select(target)
            target.focus()
            target.scroll_visible()
        else:
            self.query_one(PromptInput).focus()

    # branches: edit, alternatives, delete
    def _branch_of(self, message_id: int) -> tuple[int, int] | None:
        ids = [m.id for m in self.store.siblings(message_id)]
        return (ids.index(message_id) + 1, len(ids)) if message_id in ids else None

    def on_descendant_focus(self, event) -> None:
        widget = getattr(event, "widget", None)
        if isinstance(widget, (UserMessage, AssistantMessage)):
            self.focused_message = widget

    async def _fork_at(self, edited: UserMessage) -> None:
        """Take the edited message and what follows it off the screen; the session keeps what is before."""
        log = self.query_one(ChatLog)
        children = list(log.children)
        if edited in children:
            await log.remove_children(children[children.index(edited):])
        if self.session is not None:
            self.session.set_history(self._history())
        if self.selected not in self._turns():
            self.selected = None

    def action_edit(self, view: UserMessage | None = None) -> None:
        """Put a sent message back in the prompt; sending it starts a new branch there."""
        if self.streaming is not None:
            self.notify("Wait for the reply to finish, or press Esc.", severity="warning")
            return
        users = list(self.query(UserMessage))
        if view is None:
            view = self.focused_message if isinstance(self.focused_message, UserMessage) else None
            view = view if view in users else (users[-1] if users else None)
        if view is None or view.message_id is None:
            self.notify("No message to edit yet.", severity="warning")
            return
        self.editing = view
        self.refresh_bindings()
        prompt = self.query_one(PromptInput)
        prompt.load_text(view.text)
        prompt.focus()
        self.notify("Editing: Enter sends it as a new branch (the old one is kept); Esc cancels.")

    async def action_switch_branch(self, step: int) -> None:
        """Show the previous/next alternative of the selected message (an edit or a regenerated reply)."""
        if self.streaming is not None or self.chat_id is None:
            return
        shown = list(self.query_one(ChatLog).children)
        # the selected message; else the reply in focus; else the last message that has versions
        candidates = [self.focused_message if self.focused_message in shown else None, self._target(),
                      *[v for v in reversed(shown) if getattr(v, "branch", None)]]
        if self.focused is not None and self.focused is self.focused_message:
            candidates = candidates[:1]  # a message in focus switches only its own versions
        view = next((v for v in candidates if v is not None and getattr(v, "branch", None)
                     and v.branch[1] > 1), None)
        if view is None or view.message_id is None:
            self.notify("This message has no other branch.", severity="information")
            return
        siblings = self.store.siblings(view.message_id)
        ids = [m.id for m in siblings]
        index = max(0, min(ids.index(view.message_id) + step, len(ids) - 1))
        if ids[index] == view.message_id:
            return
        self.store.set_leaf(self.chat_id, self.store.leaf_under(ids[index]))
        await self.load_chat(self.chat_id, focus=ids[index])

    async def on_message_actions(self, event: MessageActions) -> None:
        if event.action == "edit" and isinstance(event.view, UserMessage):
            self.action_edit(event.view)
        elif event.action == "delete":
            await self.delete_message(event.view)

    async def delete_message(self, view) -> None:
        """Delete one message and what follows it on its branch (a second press confirms)."""
        if self.streaming is not None:
            self.notify("Wait for the reply to finish, or press Esc.", severity="warning")
            return
        if view is None or view.message_id is None or self.chat_id is None:
            return
        if self._confirm_delete != view.message_id:
            self._confirm_delete = view.message_id
            self.notify("Press Delete again to delete this message and what follows it.", severity="warning")
            return
        self._confirm_delete = None
        self.store.delete_message(view.message_id)
        await self.load_chat(self.chat_id)
        self.notify("Message deleted.")
