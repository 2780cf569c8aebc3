"""Shared fixtures for the TUI tests: an isolated STEERCHAT_HOME, the fake engine, and Pilot
helpers (the runner for `async def` tests is in tests/conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from steerchat.tui.app import SteerChatApp
from steerchat.tui.config import Config
from steerchat.store import Store
from tests.tui.fake_engine import FakeEngine

SIZE = (140, 40)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own config, data and cache folders."""
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def make_app(home, engine):
    """Build an app on the fake engine; keyword arguments go to Config."""

    def build(store: Store | None = None, warning: str | None = None, **config) -> SteerChatApp:
        app = SteerChatApp(
            Config(**config),
            session_factory=engine.open_session,
            store=store,
            config_warning=warning,
            config_file=home / "config" / "config.toml",
            export_dir=home / "exports",
        )
        record_notes(app)
        return app

    return build


def record_notes(app: SteerChatApp) -> None:
    """Keep every notification the app raises in `app.notes` (message, severity, markup).

    Tests read these instead of the live toasts: a toast expires on its own clock, which a busy
    machine can outrun before the test looks."""
    app.notes = []
    raise_note = app.notify

    def notify(message, **kw):
        app.notes.append(SimpleNamespace(message=message, severity=kw.get("severity", "information"),
                                         markup=kw.get("markup", True)))
        return raise_note(message, **kw)

    app.notify = notify


async def wait_for(pilot, condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Let the app run until `condition()` holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


async def ready(pilot) -> None:
    """Wait until the model has loaded and the chat screen is in front."""
    app = pilot.app
    await wait_for(pilot, lambda: app.session is not None and app.screen is app.chat_screen, what="model load")


async def open_settings(pilot):
    """F5, then the settings form once it is in front (returned)."""
    from steerchat.tui.screens.settings import SettingsScreen

    await pilot.press("f5")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, SettingsScreen), what="settings")
    return pilot.app.screen


async def send(pilot, text: str, wait: bool = True) -> None:
    """Type `text` into the prompt (literally, newlines via ctrl+j) and press Enter."""
    app = pilot.app
    prompt = app.chat_screen.query_one("#prompt")
    prompt.focus()
    prompt.load_text(text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.chat_screen.streaming is not None or app.chat_screen._turns(), what="turn start")
    if wait:
        await finished(pilot)


async def finished(pilot) -> None:
    screen = pilot.app.chat_screen
    await wait_for(pilot, lambda: screen.streaming is None and screen._turns() and screen._turns()[-1].status != "streaming",
                   what="reply to finish")
    await pilot.pause()


def screen_lines(app, widget=None) -> list[list]:
    """The screen as rows of Rich segments, cropped to `widget`'s region when given."""
    strips = app.screen._compositor.render_strips()
    if widget is None:
        return [list(strip) for strip in strips]
    region = widget.region
    return [list(strip.crop(region.x, region.right)) for strip in strips[region.y : region.bottom]]


def screen_text(app, widget=None) -> str:
    """What the screen (or `widget`'s part of it) shows, as plain text."""
    return "\n".join("".join(seg.text for seg in row).rstrip() for row in screen_lines(app, widget))
