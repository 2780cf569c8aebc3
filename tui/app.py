"""The steerchat Textual app and `run_chat`, the entry point the CLI calls.

The engine is imported only inside the loading worker (through the default session
factory), so importing this module never imports torch. Tests inject a fake factory.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from steerchat.engine.core.api import (
    ChatSession,
    EngineError,
    LoadProgress,
    ModelNotAvailable,
)
from steerchat.engine.core.levels import DEFAULT_LEVELS
from steerchat.engine.core.paths import get_paths
from steerchat.tui.config import Config, load_config, merge_overrides, save_config
from steerchat.tui.sanitize import sanitize
from steerchat.tui.terminal_input import safe_driver_class
from steerchat.tui.screens.chat import ChatScreen
from steerchat.tui.screens.loading import LoadingScreen
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from steerchat.store import Store, open_store

SessionFactory = Callable[..., ChatSession]


class SteerChatApp(App[int]):
    """The chat app. `session_factory` has `engine.runtime.session.open_session`'s signature; the
    command line passes the real one (so the UI never imports the engine's runtime), tests a fake."""

    TITLE = "steerchat"
    CSS_PATH = "app.tcss"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
        Binding("f5", "settings", "Settings", show=False, id="app.settings"),
    ]

    class Loaded(Message):
        def __init__(self, session: ChatSession) -> None:
            super().__init__()
            self.session = session

    class LoadFailed(Message):
        def __init__(self, model: str, error: str, not_available: bool) -> None:
            super().__init__()
            self.model = model
            self.error = error
            self.not_available = not_available

    class Progress(Message):
        def __init__(self, step: LoadProgress) -> None:
            super().__init__()
            self.step = step

    def __init__(
        self,
        config: Config | None = None,
        *,
        session_factory: SessionFactory | None = None,
        store: Store | None = None,
        config_warning: str | None = None,
        config_file: Path | None = None,
        export_dir: Path | None = None,
    ) -> None:
        # Pastes arrive as inert text and stray bytes as U+FFFD (see tui/terminal_input.py).
        super().__init__(driver_class=safe_driver_class())
        self.config = config or Config()
        if session_factory is None:
            raise TypeError("SteerChatApp needs a session_factory (steerchat.cli.main.open_engine_session)")
        self.session_factory = session_factory
        paths = get_paths()
        self.store_warning: str | None = None
        if store is None:
            # A damaged, locked or read-only history never stops the app: open_store moves a
            # damaged file aside or falls back to memory and says so in one line.
            store, self.store_warning = open_store(paths.history_db)
        self.store = store
        self.config_warning = config_warning
        self.config_file = config_file
        self.export_dir = export_dir or paths.data_dir / "exports"
        self.session: ChatSession | None = None
        self.chat_screen = ChatScreen(self.store)
        self.loading: LoadingScreen | None = None
        if self.config.theme in self.available_themes:
            self.theme = self.config.theme

    def run(self, *args, loop: asyncio.AbstractEventLoop | None = None, **kwargs):
        """App.run on a loop of our own (kept in `own_loop`): asyncio.run() would join the
        default executor's threads on the way out, so Ctrl+Q while a thread worker is busy in
        the engine would blank the screen and hang; `run_chat` decides after the run instead."""
        if loop is None:
            loop = self.own_loop = asyncio.new_event_loop()
        return super().run(*args, loop=loop, **kwargs)

    def get_default_screen(self) -> Screen:
        return self.chat_screen

    def on_mount(self) -> None:
        if self.store_warning:
            self.notify(sanitize(self.store_warning), severity="warning", timeout=12, markup=False)
        if self.store.recovered:
            self.notify(f"{self.store.recovered} reply cut off by a crash was saved as interrupted.", timeout=6)
        self.load_model(self.config.model)

    async def action_quit(self) -> None:
        """Quit; a reply being written is stopped and saved as it stands."""
        view = self.chat_screen.streaming
        if view is not None:
            self.chat_screen.cancel_event.set()  # the engine stops at its next token
            if view.message_id is not None:
                self.store.update_message(view.message_id, content=view.text, status="stopped")
        self.exit()

    # loading
    def load_model(self, model: str) -> None:
        """Show the loading screen and open `model` in a thread worker."""
        self.config.model = model
        self.loading = LoadingScreen(model, self.config_warning)
        self.push_screen(self.loading)
        self._open_session(model)

    @work(thread=True, exclusive=True, group="load")
    def _open_session(self, model: str) -> None:
        cfg = self.config
        try:
            session = self.session_factory(
                model, sae=cfg.sae, adapter=cfg.adapter, level=cfg.level, system=cfg.system,
                quant=cfg.quant, sampling=cfg.sampling,
                progress=lambda step: self.post_message(self.Progress(step)),
            )
        except ModelNotAvailable as exc:
            self.post_message(self.LoadFailed(model, str(exc), True))
        except EngineError as exc:
            self.post_message(self.LoadFailed(model, str(exc), False))
        except Exception as exc:  # a loader bug: say what it was, keep the app alive
            self.post_message(self.LoadFailed(model, f"{type(exc).__name__}: {exc}", False))
        else:
            self.post_message(self.Loaded(session))

    def on_steer_chat_app_progress(self, message: Progress) -> None:
        if self.loading is not None and self.loading.is_attached:
            self.loading.show_progress(message.step)

    def on_steer_chat_app_load_failed(self, message: LoadFailed) -> None:
        if self.loading is not None:
            self.loading.show_error(message.error, offer_starter=message.not_available)

    def on_steer_chat_app_loaded(self, message: Loaded) -> None:
        self.session = message.session
        if self.loading is not None:
            self.loading.dismiss()
            self.loading = None
        self.chat_screen.attach(message.session)
        if self.config_warning:
            self.notify(sanitize(self.config_warning), severity="warning", timeout=10, markup=False)

    def on_loading_screen_use_model(self, message: LoadingScreen.UseModel) -> None:
        self.loading.dismiss()
        self.loading = None
        self.load_model(message.model)

    # chats and export
    def action_chats(self, search: bool = False) -> None:
        from steerchat.tui.screens.chats import ChatListScreen

        async def opened(chat_id: int | tuple[int, int] | None) -> None:
            current = self.chat_screen.chat_id
            focus = None
            if isinstance(chat_id, tuple):  # a search hit: that chat, at that message
                chat_id, focus = chat_id
            if chat_id is not None:
                await self.chat_screen.load_chat(chat_id, focus=focus)
            elif current is not None and self.store.chat(current) is None:
                await self.chat_screen.load_chat(None)  # the open chat was deleted
            else:
                self.chat_screen.update_status()

        if self.chat_screen.streaming is not None:
            self.notify("Wait for the reply to finish, or press Esc.", severity="warning")
            return
        self.push_screen(ChatListScreen(self.store, self.export_dir, self.chat_screen.chat_id, search=search), opened)

    def export_current(self, fmt: str) -> None:
        from steerchat.tui.export import export_chat

        if self.chat_screen.chat_id is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        path = export_chat(self.store, self.chat_screen.chat_id, self.export_dir, fmt)
        self.notify(f"Exported to {path}", markup=False)

    def action_settings(self) -> None:
        """Open the settings form; on save, write config.toml and apply what can apply now."""
        from steerchat.tui.screens.settings import SettingsScreen

        def saved(config: Config | None) -> None:
            if config is None:
                return
            restart = (config.model, config.sae) != (self.config.model, self.config.sae)
            self.config = config
            if self.session is not None:
                # The engine reads these at the start of each turn.
                self.session.system_prompt = config.system
                self.session.sampling = config.sampling
            path = save_config(self.config, self.config_file)
            note = " Model and SAE apply at the next start." if restart else ""
            self.notify(f"Settings saved to {path}.{note}", markup=False)

        names = self.session.levels.names if self.session is not None else [lv.name for lv in DEFAULT_LEVELS]
        self.push_screen(SettingsScreen(self.config, names), saved)

    def save_settings(self) -> None:
        """Keep the current model, level, theme and the rest as the defaults in config.toml."""
        if self.session is not None:
            self.config.level = self.session.settings.level.name
        self.config.theme = self.theme
        path = save_config(self.config, self.config_file)
        self.notify(f"Settings saved to {path}", markup=False)

    def watch_theme(self, theme: str) -> None:
        # A theme picked in the palette is a setting the user expects to keep.
        if theme != self.config.theme and self.is_running:
            self.config.theme = theme
            try:
                save_config(self.config, self.config_file)
            except OSError as exc:
                self.notify(f"Could not save the theme: {exc}", severity="error", markup=False)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat_screen
        yield SystemCommand("Regenerate", "Write the last reply again", chat.action_regenerate)
        yield SystemCommand("Stop reply", "Stop the reply being written (Esc)", chat.action_cancel)
        yield SystemCommand("Copy reply", "Copy the selected reply to the clipboard", chat.action_copy)
        yield SystemCommand("New chat", "Clear the screen and start a new chat", chat.action_clear)
        yield SystemCommand("Chats", "Open, rename, delete or export saved chats", self.action_chats)
        yield SystemCommand("Search chats", "Find a message in any saved chat and open it there",
                            lambda: self.action_chats(search=True))
        yield SystemCommand("Edit a message", "Put the selected (or last) prompt back to send as a new branch",
                            chat.action_edit)
        yield SystemCommand("Previous branch", "Show the previous alternative of the selected message (Alt+←)",
                            lambda: self.run_worker(chat.action_switch_branch(-1)))
        yield SystemCommand("Next branch", "Show the next alternative of the selected message (Alt+→)",
                            lambda: self.run_worker(chat.action_switch_branch(1)))
        yield SystemCommand("Copy prompt", "Copy the selected reply's prompt to the clipboard", chat.action_copy_prompt)
        yield SystemCommand("Copy code block", "Copy the last code block of the selected reply", chat.action_copy_code)
        yield SystemCommand("Why refused", "Explain the selected reply", chat.action_why)
        yield SystemCommand("Flag reply as bad", "Mark the selected reply for learning from mistakes", chat.action_flag)
        yield SystemCommand("Export chat to Markdown", "With each turn's level and top features",
                            lambda: self.export_current("md"))
        yield SystemCommand("Export chat to JSON", "With full traces", lambda: self.export_current("json"))
        yield SystemCommand("Settings", "System prompt, default level, sampling, model (F5)", self.action_settings)
        yield SystemCommand("Save settings", "Keep model, level, theme and sampling in config.toml", self.save_settings)
        yield SystemCommand("Toggle features panel", "Show or hide the SAE features", chat.action_toggle_features)
        if self.session is not None:
            for level in self.session.levels.levels:
                yield SystemCommand(
                    f"Safety level: {level.name}", level.description or f"Move the slider to {level.name}",
                    lambda name=level.name: chat.query_one("#slider").select(name),
                )


def run_chat(
    model: str | None = None,
    sae: str | None = None,
    level: str | None = None,
    system: str | None = None,
    adapter: str | None = None,
    quant: str | None = None,
    *,
    session_factory: SessionFactory,
) -> int:
    """Load config.toml, apply the CLI overrides (None keeps the config value), run the app.

    Returns the process exit code.
    """
    config_file = get_paths().config_file
    config, warning = load_config(config_file)
    config = merge_overrides(config, model=model, sae=sae, level=level, system=system, adapter=adapter, quant=quant)
    app = SteerChatApp(config, session_factory=session_factory, config_warning=warning, config_file=config_file)
    app.run()
    app.store.close()
    if app.store.unsaved_file is not None:
        print(f"steerchat: the history database stayed busy; unsaved writes are in {app.store.unsaved_file}")
    code = app.return_code or 0
    loop = getattr(app, "own_loop", None)
    if loop is not None:
        if _executor_still_busy(loop, wait_s=2.0):
            # A worker still busy in the engine (a huge prompt being tokenised, a load) cannot
            # be interrupted from Python; Ctrl+Q must still end the process rather than hang.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        loop.close()
    return code


def _executor_still_busy(loop: asyncio.AbstractEventLoop, wait_s: float) -> bool:
    """Shut the loop's default executor (the thread workers) down; True if a worker is still
    running after `wait_s`. The wait runs in a daemon thread because Python 3.11's
    `shutdown_default_executor` joins its helper thread even when cancelled, so a timeout
    around it (`asyncio.wait_for`) would hang exactly when a worker is stuck."""
    import threading

    waiter = threading.Thread(target=loop.run_until_complete, args=(loop.shutdown_default_executor(),),
                              name="steerchat-exit", daemon=True)
    waiter.start()
    waiter.join(wait_s)
    return waiter.is_alive()
