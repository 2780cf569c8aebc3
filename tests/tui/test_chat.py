"""Item 2: streaming, keys, cancel, regenerate, copy, clear, palette, literal text."""

from textual.widgets import Markdown

from steerchat.tui.widgets.chat import AssistantMessage, UserMessage
from tests.tui.conftest import SIZE, finished, ready, screen_lines, screen_text, send, wait_for
from tests.tui.fake_engine import COMPLY_TEXT


def _visible_text(widget) -> str:
    return screen_text(widget.app, widget)


async def test_reply_streams_and_is_saved(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        session.hold_at = 3
        await send(pilot, "hello there", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 3")
        await pilot.pause(0.05)
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.text == "Sure, here is" and view.status == "streaming"
        row = app.store.messages(app.chat_screen.chat_id)[1]
        assert row.status == "streaming"  # the in-flight reply row exists from the start
        session.release.set()
        await finished(pilot)
        assert view.text == COMPLY_TEXT and view.status == "ok"
        user, reply = app.store.messages(app.chat_screen.chat_id)
        assert (user.role, user.content, user.level) == ("user", "hello there", "Off")
        assert (reply.content, reply.status, reply.level) == (COMPLY_TEXT, "ok", "Off")
        assert '"verdict"' in reply.trace_json
        assert app.store.chats()[0].title == "hello there"


async def test_partial_reply_is_saved_while_streaming(make_app, engine, monkeypatch):
    monkeypatch.setattr("steerchat.tui.screens.chat.SAVE_EVERY_S", 0.0)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        session.hold_at = 4
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 4")
        await pilot.pause(0.05)
        reply = app.store.messages(app.chat_screen.chat_id)[1]
        assert (reply.content, reply.status) == ("Sure, here is **an", "streaming")
        session.release.set()
        await finished(pilot)


async def test_markdown_is_rendered(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        shown = _visible_text(app.chat_screen.query_one(Markdown))
        assert "an answer" in shown and "**" not in shown  # bold is rendered, not shown as stars
        assert "• first point" in shown


async def test_enter_sends_and_ctrl_j_adds_a_newline(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("o", "n", "e", "ctrl+j", "t", "w", "o", "shift+enter", "3")
        assert app.chat_screen.query_one("#prompt").text == "one\ntwo\n3"
        assert engine.sessions[0].calls == []
        await pilot.press("enter")
        await finished(pilot)
        assert engine.sessions[0].calls == [("send", "one\ntwo\n3")]
        assert app.chat_screen.query_one("#prompt").text == ""


async def test_escape_cancels_and_keeps_the_partial_marked_stopped(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        session.hold_at = 2
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 2")
        await pilot.press("escape")
        session.release.set()
        await finished(pilot)
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.status == "stopped" and view.text == "Sure, here"
        assert "⏹ stopped" in str(view.query_one(".header").render())
        reply = app.store.messages(app.chat_screen.chat_id)[1]
        assert (reply.content, reply.status) == ("Sure, here", "stopped")
        assert session.history == [("hello", "Sure, here")]


async def test_engine_error_keeps_partial_and_says_why(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        engine.sessions[0].fail_with = "CUDA out of memory."
        await send(pilot, "hello")
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.status == "error" and view.text == "Sure, here"
        assert "CUDA out of memory." in str(view.query_one(".header").render())
        assert app.store.messages(app.chat_screen.chat_id)[1].status == "error"


async def test_engine_exception_does_not_kill_the_app(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)

        def boom(*a, **k):
            raise RuntimeError("tensor on wrong device")

        engine.sessions[0].send = boom
        await send(pilot, "hello")
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.status == "error"
        # said in plain words with what to do next, without the exception's class name
        assert any("Press Ctrl+R to try again" in n.message for n in app.notes)
        assert not any("RuntimeError" in n.message for n in app.notes)
        assert "RuntimeError" not in str(view.query_one(".header").render())


async def test_regenerate_adds_an_alternative_reply(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        await send(pilot, "hello")
        session.replies["hello"] = "A second try."
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.chat_screen.query_one(AssistantMessage).text == "A second try."
                       and app.chat_screen.streaming is None, what="regenerated reply")
        assert [c[0] for c in session.calls] == ["send", "regenerate"]
        assert len(app.chat_screen.query(AssistantMessage)) == 1
        chat = app.chat_screen.chat_id
        assert [(r.role, r.content, r.status) for r in app.store.branch(chat)] == [
            ("user", "hello", "ok"), ("assistant", "A second try.", "ok")]
        # the first reply is kept beside it, with its own trace
        rows = app.store.messages(chat)
        assert [r.content for r in rows if r.role == "assistant"] == [COMPLY_TEXT, "A second try."]
        assert all(r.trace_json for r in rows if r.role == "assistant")
        assert app.chat_screen.query_one(AssistantMessage).branch == (2, 2)


async def test_copy_flag_and_clear(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("f4")
        assert app.clipboard == COMPLY_TEXT
        await pilot.press("ctrl+b")
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.flagged and "flagged bad" in str(view.query_one(".header").render())
        assert [m.content for m in app.store.flagged()] == [COMPLY_TEXT]
        old_chat = app.chat_screen.chat_id
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not app.chat_screen.query(AssistantMessage) and app.chat_screen.chat_id is None
        assert engine.sessions[0].history == []
        assert app.store.chat(old_chat) is not None  # clearing never deletes a saved chat
        await send(pilot, "again")
        assert app.chat_screen.chat_id != old_chat


async def test_palette_offers_the_chat_actions(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for title in ("Regenerate", "Copy reply", "New chat", "Chats", "Why refused", "Flag reply as bad",
                      "Export chat to Markdown", "Export chat to JSON", "Safety level: Max", "Stop reply"):
            assert title in titles
        await send(pilot, "hello")
        await pilot.press("ctrl+p")
        await pilot.press(*"Copy reply")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.clipboard == COMPLY_TEXT, what="copy from palette")
        await pilot.press("ctrl+p", *"Regenerate")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: ("regenerate", "hello") in app.session.calls, what="regenerate from palette")
        await finished(pilot)


HOSTILE = "[bold red]x[/] \x1b[2J\x1b[H\x07 [link=file:///etc/passwd]a[/link] \x1b]8;;http://evil\x1b\\\\y"


async def test_markup_and_escapes_are_shown_literally(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        engine.sessions[0].replies[HOSTILE] = HOSTILE
        await send(pilot, HOSTILE)
        user = _visible_text(app.chat_screen.query_one(UserMessage))
        reply = _visible_text(app.chat_screen.query_one(AssistantMessage).query_one(Markdown))
        for shown in (user, reply):
            assert "[bold red]x[/]" in shown
            assert "[link=file:///etc/passwd]a[/link]" in shown
            assert "␛[2J␛[H␇" in shown
            assert "\x1b" not in shown and "\x07" not in shown
        # no segment carries a link or a style that came from the text
        for widget in (app.chat_screen.query_one(UserMessage), app.chat_screen.query_one(Markdown)):
            for line in screen_lines(app, widget):
                for seg in line:
                    assert not (seg.style and seg.style.link), seg
        # the saved text is the model's own, unchanged
        assert app.store.messages(app.chat_screen.chat_id)[1].content == HOSTILE


async def test_view_follows_the_reply_unless_scrolled_up(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        long_reply = "\n\n".join(f"line {i}" for i in range(60))
        session.replies["long"] = long_reply
        session.hold_at = 60
        await send(pilot, "long", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 60")
        await pilot.pause(0.2)
        log = app.chat_screen.query_one("#log")
        assert log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y  # following
        log.scroll_to(y=0, animate=False)  # the user scrolls up to read
        await pilot.pause()
        session.release.set()
        await finished(pilot)
        await pilot.pause(0.1)
        assert log.scroll_y == 0 and log.max_scroll_y > 0  # left where the user put it
        session.hold_at = None
        await send(pilot, "long")  # a new turn follows again
        await pilot.pause(0.1)
        assert log.scroll_y == log.max_scroll_y


async def test_links_in_replies_are_copied_never_opened(make_app, engine, monkeypatch):
    opened = []
    app = make_app()
    monkeypatch.setattr(app, "open_url", lambda url, **kw: opened.append(url))
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        engine.sessions[0].replies["link"] = "see [here](file:///etc/passwd)"
        await send(pilot, "link")
        markdown = app.chat_screen.query_one(AssistantMessage).query_one(Markdown)
        markdown.post_message(Markdown.LinkClicked(markdown, "file:///etc/passwd"))
        await pilot.pause(0.1)
        assert opened == [] and app.clipboard == "file:///etc/passwd"


async def test_status_line_shows_an_active_adapter(make_app, engine):
    app = make_app(adapter="/work/runs/align-1/adapter")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert engine.opened[0]["adapter"] == "/work/runs/align-1/adapter"
        assert "adapter adapter" in screen_text(app, app.chat_screen.query_one("#status"))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "adapter" not in screen_text(app, app.chat_screen.query_one("#status"))
