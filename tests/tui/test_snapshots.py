"""Snapshots of the main screens (pytest-textual-snapshot). Update with --snapshot-update
after checking the new SVGs by eye."""

import threading
from types import SimpleNamespace

import pytest

from steerchat.engine.core.api import LoadProgress
from steerchat.tui.screens import chats as chats_module
from steerchat.tui.screens.chats import ChatListScreen
from steerchat.tui.screens.loading import LoadingScreen
from steerchat.tui.screens.why_refused import WhyRefusedScreen
from steerchat.engine.core.trace import Timings
from steerchat.tui.widgets.chat import UserMessage
from tests.tui.conftest import finished, ready, send, wait_for

SIZE = (140, 40)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    # Chat list rows show dates; freeze them so the snapshot is stable.
    monkeypatch.setattr(chats_module, "time", SimpleNamespace(strftime=lambda *a: "2026-11-21 12:00",
                                                              localtime=lambda *a: None))


async def _settle(pilot):
    await pilot.pause(0.1)
    pilot.app.clear_notifications()
    # a blinking cursor is caught in either phase on a busy machine: hold it on, as the snapshots show it
    for screen in pilot.app.screen_stack:
        for widget in screen.query("TextArea, Input"):
            widget.cursor_blink = False
    await pilot.pause()


def test_loading_screen(snap_compare, make_app):
    release = threading.Event()

    def loading(model, **kw):
        kw["progress"](LoadProgress("download", "model-00001-of-00002.safetensors", 1.2 * 2**30, 2.0 * 2**30))
        release.wait(10)
        raise SystemExit  # never reached in the snapshot

    app = make_app()
    app.session_factory = loading

    async def run_before(pilot):
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen)
                       and "MiB" in str(app.screen.query_one("#detail").render()), what="progress")
        await _settle(pilot)

    try:
        assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
    finally:
        release.set()


def test_offline_screen(snap_compare, make_app, engine):
    engine.missing = ("phi-3-mini",)
    app = make_app()

    async def run_before(pilot):
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_with_a_refused_turn(snap_compare, make_app):
    app = make_app(level="Medium")

    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "how do I make a bomb?")
        await send(pilot, "Then give me a cake recipe [bold]please[/]")
        await pilot.press("ctrl+up")
        app.chat_screen.query_one("#prompt").focus()
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_why_refused_side_by_side(snap_compare, make_app):
    app = make_app(level="High")

    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "how do I make a bomb?")
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyRefusedScreen), what="why view")
        await pilot.press("o")
        await wait_for(pilot, lambda: app.screen.rerun_trace is not None, what="rerun")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_chat_list(snap_compare, make_app):
    app = make_app()

    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+l")
        await send(pilot, "how do I make a bomb?")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_branch_indicator(snap_compare, make_app, engine):
    """An edited prompt and a regenerated reply: both show which branch is on screen (‹ 2/2 ›)."""
    app = make_app()

    async def run_before(pilot):
        await ready(pilot)
        session = engine.sessions[0]
        session.replies.update({"first": "one", "second": "two", "second, edited": "two, edited"})
        await send(pilot, "first")
        await send(pilot, "second")
        screen = app.chat_screen
        screen.action_edit(list(screen.query(UserMessage))[1])
        screen.query_one("#prompt").load_text("second, edited")
        await pilot.press("enter")
        await finished(pilot)
        session.replies["second, edited"] = "two, edited, again"
        await pilot.press("ctrl+r")
        await finished(pilot)
        screen.query_one("#prompt").focus()
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_reply_footer(snap_compare, make_app, engine):
    """Each reply's footer: time to first token, tokens/s, reply tokens, prompt against the context."""
    engine.session_kw["timings"] = Timings(first_token_s=0.42, tokens_per_s=31.5, prompt_tokens=120,
                                           reply_tokens=48, context_tokens=4096)
    app = make_app()

    async def run_before(pilot):
        await ready(pilot)
        await send(pilot, "hello")
        app.chat_screen.query_one("#prompt").focus()
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)

