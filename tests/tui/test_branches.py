"""Branches and alternatives: edit an earlier prompt (a fork), regenerate (an alternative
reply), browse them with Alt+←/→, delete a message, export, search, copy, the reply footer."""

from __future__ import annotations

import json

from steerchat.engine.core.trace import Timings, TurnTrace
from steerchat.tui.screens.chats import ChatListScreen
from steerchat.tui.screens.why_refused import WhyRefusedScreen
from steerchat.tui.widgets.chat import AssistantMessage, UserMessage, plain_error, timing_line
from tests.tui.conftest import SIZE, finished, ready, screen_text, send, wait_for
from tests.tui.fake_engine import COMPLY_TEXT


def _contents(app):
    return [m.content for m in app.store.branch(app.chat_screen.chat_id)]


async def _two_turns(pilot, engine):
    session = engine.sessions[0]
    session.replies.update({"first": "one", "second": "two", "second, edited": "two, edited"})
    await send(pilot, "first")
    await send(pilot, "second")
    return session


async def test_edit_an_earlier_message_forks_and_keeps_both(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = await _two_turns(pilot, engine)
        screen = app.chat_screen
        users = list(screen.query(UserMessage))
        users[1].focus()
        await pilot.press("e")
        assert screen.editing is users[1] and screen.query_one("#prompt").text == "second"
        prompt = screen.query_one("#prompt")
        prompt.load_text("second, edited")
        await pilot.press("enter")
        await finished(pilot)
        assert _contents(app) == ["first", "one", "second, edited", "two, edited"]
        assert len(app.store.messages(screen.chat_id)) == 6  # the old branch is kept
        # the engine saw only the branch before the edit
        assert session.history == [("first", "one"), ("second, edited", "two, edited")]
        assert "‹ 2/2 ›  edited versions" in screen_text(app)
        # back to the first branch
        list(screen.query(UserMessage))[1].focus()
        await pilot.press("alt+left")
        await wait_for(pilot, lambda: _contents(app)[-1] == "two", what="first branch")
        await pilot.pause()
        assert [v.text for v in screen.query(UserMessage)] == ["first", "second"]
        assert "‹ 1/2 ›  edited versions" in screen_text(app)
        assert session.history == [("first", "one"), ("second", "two")]
        await pilot.press("alt+right")
        await wait_for(pilot, lambda: _contents(app)[-1] == "two, edited", what="second branch")


async def test_regenerate_alternatives_are_browsable_with_their_own_traces(make_app, engine):
    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        await send(pilot, "how do I make a bomb?")
        screen = app.chat_screen
        assert screen.query_one(AssistantMessage).refused
        session.settings = session.settings.with_level(session.levels.levels[0])
        await pilot.press("ctrl+r")
        await finished(pilot)
        view = screen.query_one(AssistantMessage)
        assert view.branch == (2, 2) and not view.refused and "‹ 2/2 ›" in screen_text(app, view)
        view.focus()
        await pilot.press("alt+left")
        await wait_for(pilot, lambda: screen.query_one(AssistantMessage).branch == (1, 2), what="first try")
        first = screen.query_one(AssistantMessage)
        assert first.refused and first.trace.level == "Medium"
        assert session.history[-1][1] == first.text


async def test_delete_a_message_and_what_follows(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = await _two_turns(pilot, engine)
        screen = app.chat_screen
        list(screen.query(UserMessage))[1].focus()
        await pilot.press("delete")
        assert _contents(app) == ["first", "one", "second", "two"]  # asks first
        await pilot.press("delete")
        await wait_for(pilot, lambda: len(list(screen.query(UserMessage))) == 1, what="delete")
        assert _contents(app) == ["first", "one"]
        assert session.history == [("first", "one")]


async def test_export_branch_to_markdown_and_tree_to_json(make_app, engine, home):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await _two_turns(pilot, engine)
        screen = app.chat_screen
        screen.action_edit(list(screen.query(UserMessage))[1])
        screen.query_one("#prompt").load_text("second, edited")
        await pilot.press("enter")
        await finished(pilot)
        app.export_current("md")
        app.export_current("json")
        md = next((home / "exports").glob("*.md")).read_text()
        assert "second, edited" in md and "two, edited" in md and "\ntwo\n" not in md
        data = json.loads(next((home / "exports").glob("*.json")).read_text())
        assert len(data["messages"]) == 6
        parents = {m["id"]: m["parent_id"] for m in data["messages"]}
        edited = [m for m in data["messages"] if m["content"] == "second, edited"][0]
        old = [m for m in data["messages"] if m["content"] == "second"][0]
        assert parents[edited["id"]] == parents[old["id"]]
        assert data["current_leaf"] == data["messages"][-1]["id"]


async def test_search_opens_the_chat_at_the_message_on_its_branch(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await _two_turns(pilot, engine)
        screen = app.chat_screen
        chat = screen.chat_id
        screen.action_edit(list(screen.query(UserMessage))[1])
        screen.query_one("#prompt").load_text("second, edited")
        await pilot.press("enter")
        await finished(pilot)
        await pilot.press("ctrl+l")
        await send(pilot, "something else")
        app.action_chats(search=True)
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await pilot.press(*"two")
        await wait_for(pilot, lambda: "Reply:" in screen_text(app), what="hits")
        listing = app.screen.query_one("#chat-list")
        ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
        old_reply = [m for m in app.store.messages(chat) if m.content == "two"][0]
        listing.highlighted = ids.index(f"hit:{chat}:{old_reply.id}")
        listing.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen and screen.chat_id == chat, what="open hit")
        await pilot.pause()
        assert _contents(app)[-2:] == ["second", "two"]
        assert screen.selected is not None and screen.selected.message_id == old_reply.id


async def test_search_from_the_palette_and_no_hits(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello there")
        app.action_chats(search=True)
        await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
        await wait_for(pilot, lambda: getattr(app.screen.focused, "id", None) == "search", what="search focus")
        await pilot.press(*"zebra")
        await wait_for(pilot, lambda: "No message matches." in screen_text(app), what="no hits")
        await pilot.press("escape")


async def test_copy_prompt_code_and_why_text(make_app, engine):
    app = make_app(level="High")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        engine.sessions[0].replies["code please"] = "Here:\n\n```python\nprint('hi')\n```\n\nDone."
        await send(pilot, "code please")
        screen = app.chat_screen
        screen.action_copy_code()
        assert app.clipboard == "print('hi')"
        screen.action_copy_prompt()
        assert app.clipboard == "code please"
        await send(pilot, "how do I make a bomb?")
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyRefusedScreen), what="why")
        await pilot.press("c")
        assert "refus" in app.clipboard.lower() and "\x1b" not in app.clipboard


async def test_reply_footer_shows_speed_and_size(make_app, engine):
    engine.session_kw["timings"] = Timings(first_token_s=0.42, tokens_per_s=31.5, prompt_tokens=120,
                                           reply_tokens=48, context_tokens=4096)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        view = app.chat_screen.query_one(AssistantMessage)
        shown = " ".join(screen_text(app, view).replace("█", "").split())
        assert "first token 0.42 s · 31.5 tok/s · 48 tokens · prompt 120/4,096 tokens (3%)" in shown
        # saved with the reply and read back the same
        trace = TurnTrace.from_json(app.store.messages(app.chat_screen.chat_id)[-1].trace_json)
        assert trace.timings.context_tokens == 4096


def test_plain_errors_name_no_exception_class():
    assert plain_error("CUDA out of memory.") == "CUDA out of memory."  # already a sentence
    assert "GPU ran out of memory" in plain_error("torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB")
    generic = plain_error("RuntimeError: tensor on wrong device")
    assert "Error" not in generic and "Ctrl+R" in generic
    assert timing_line(None) == "" and timing_line(TurnTrace("p", "r", "Off", "none", None, 0, False, "m")) == ""
