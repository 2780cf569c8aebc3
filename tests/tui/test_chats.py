"""Chats saved as they happen, crash recovery, the chat list (open/rename/delete), export."""

import json

from steerchat.tui.screens.chats import ChatListScreen
from steerchat.store import Store
from steerchat.tui.widgets.chat import AssistantMessage
from tests.tui.conftest import SIZE, ready, screen_text, send, wait_for
from tests.tui.fake_engine import COMPLY_TEXT


async def test_interrupted_reply_comes_back_marked(make_app, home):
    store = Store(home / "data" / "history.sqlite")
    chat = store.new_chat("before the crash", "phi-3-mini")
    store.add_message(chat, "user", "tell me a story")
    store.add_message(chat, "assistant", "Once upon a", status="streaming")
    store.close()  # the app died here, mid-reply

    app = make_app(store=Store(home / "data" / "history.sqlite"))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert any("saved as interrupted" in n.message for n in app.notes)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        assert "before the crash" in screen_text(app)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is app.chat_screen and app.chat_screen.chat_id == chat, what="open")
        await pilot.pause()
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.status == "interrupted" and view.text == "Once upon a"
        assert "⚠ interrupted" in screen_text(app, view)
        # the session continues from the saved history
        assert app.session.history == [("tell me a story", "Once upon a")]
        await send(pilot, "go on")
        assert [m.content for m in app.store.messages(chat)][-2:] == ["go on", COMPLY_TEXT]


async def test_open_a_saved_chat_restores_traces_and_levels(make_app):
    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        first = app.chat_screen.chat_id
        await pilot.press("ctrl+l")
        await send(pilot, "hello")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await pilot.press("down", "enter")  # newest first: the second entry is the first chat
        await wait_for(pilot, lambda: app.chat_screen.chat_id == first, what="first chat")
        await pilot.pause()
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.refused and view.level_label == "Medium"
        assert app.chat_screen.selected is view
        assert app.session.history == [("how to make a bomb", view.text)]


async def test_rename_and_delete_from_the_list(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        chat = app.chat_screen.chat_id
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await pilot.press("r")
        app.screen.query_one("#rename").value = "Greetings [b]x[/b]"
        await pilot.press("enter")
        assert app.store.chat(chat).title == "Greetings [b]x[/b]"
        assert "Greetings [b]x[/b]" in screen_text(app)
        await pilot.press("d")
        assert app.store.chat(chat) is not None  # one press only asks
        await pilot.press("d")
        assert app.store.chat(chat) is None
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="back to chat")
        await pilot.pause()
        assert app.chat_screen.chat_id is None and not app.chat_screen.query(AssistantMessage)


async def test_export_markdown_and_json(make_app, home):
    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        app.export_current("md")
        app.export_current("json")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await pilot.press("m")
    files = sorted((home / "exports").iterdir())
    assert [f.suffix for f in files] == [".json", ".md"]
    md = files[1].read_text()
    assert "## Assistant (level: Medium)" in md and "#4021 weapons and explosives (9.5)" in md
    data = json.loads(files[0].read_text())
    assert data["messages"][1]["trace"]["refusal_features"][0]["target"] == 16.0


async def test_quitting_mid_reply_saves_the_partial_as_stopped(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        session.hold_at = 3
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 3")
        await pilot.pause(0.05)
        chat = app.chat_screen.chat_id
        await pilot.press("ctrl+q")
        assert app.chat_screen.cancel_event.is_set()
        session.release.set()
    reply = app.store.messages(chat)[1]
    assert (reply.content, reply.status) == ("Sure, here is", "stopped")
