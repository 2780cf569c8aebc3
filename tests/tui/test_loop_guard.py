"""The loop guard in the UI: the reply footer says when it ended a reply, and the settings
form turns it off (fake engine: one word is one token, the guard's rule from engine.core.loops)."""

from steerchat.engine.core.loops import LOOP_GUARD_MESSAGE
from steerchat.engine.core.trace import Timings, TurnTrace
from steerchat.tui.widgets.chat import AssistantMessage, timing_line
from tests.tui.conftest import SIZE, open_settings, ready, screen_text, send, wait_for

LOOPING = "Sure. " + "I like it. " * 20  # 3 words said 20 times: the guard ends it at the 8th repeat


def _shown(app, widget) -> str:
    return " ".join(screen_text(app, widget).replace("█", "").split())


async def test_footer_says_the_loop_guard_ended_the_reply(make_app, engine):
    engine.session_kw["timings"] = Timings(first_token_s=0.4, tokens_per_s=30.0, prompt_tokens=12, reply_tokens=25)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        engine.sessions[0].replies["tell me"] = LOOPING
        await send(pilot, "tell me")
        view = app.chat_screen.query_one(AssistantMessage)
        shown = _shown(app, view)
        assert "stopped: it was repeating itself (loop guard)" in shown
        assert "25 tokens" in shown  # the footer keeps its figures, the message follows them
        # the reply ends after 1 + 8 * 3 words, and the trace saved with it says why
        trace = TurnTrace.from_json(app.store.messages(app.chat_screen.chat_id)[-1].trace_json)
        assert trace.loop_stopped and trace.reply == "Sure. " + "I like it. " * 7 + "I like it."
        assert not trace.stopped  # not a cancel: the header shows no "stopped" status
        await send(pilot, "hello")  # an ordinary reply says nothing about the guard
        assert "loop guard" not in _shown(app, app.chat_screen.query(AssistantMessage).last())


async def test_settings_form_turns_the_loop_guard_off(make_app, engine, home):
    from textual.widgets import Checkbox

    from steerchat.tui.config import load_config

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await open_settings(pilot)
        box = app.screen.query_one("#loop_guard", Checkbox)
        assert box.value is True and "Loop guard" in screen_text(app, box)
        box.value = False
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="form closed")
        session = engine.sessions[0]
        assert session.sampling.loop_guard is False
        session.replies["tell me"] = LOOPING
        await send(pilot, "tell me")
        trace = TurnTrace.from_json(app.store.messages(app.chat_screen.chat_id)[-1].trace_json)
        assert not trace.loop_stopped and trace.reply == LOOPING  # ran to its end
        assert "loop guard" not in _shown(app, app.chat_screen.query_one(AssistantMessage))
    config, warning = load_config(home / "config" / "config.toml")
    assert warning is None and config.sampling.loop_guard is False


async def test_settings_form_leaves_unset_sampling_to_the_model(make_app, engine):
    from textual.widgets import Input

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        form = await open_settings(pilot)
        assert form.query_one("#temperature", Input).value == "" and form.query_one("#top_k", Input).value == ""
        form.query_one("#top_k", Input).value = "20"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="form closed")
        sampling = engine.sessions[0].sampling
        assert sampling.top_k == 20 and sampling.temperature is None and sampling.top_p is None


def test_timing_line_names_the_loop_guard_even_without_timings():
    trace = TurnTrace("p", "r", "Off", "none", None, 0, False, "m", loop_stopped=True)
    assert timing_line(trace) == LOOP_GUARD_MESSAGE
    trace.timings = Timings(reply_tokens=40, prompt_tokens=9)
    assert timing_line(trace) == f"40 tokens · prompt 9 tokens · {LOOP_GUARD_MESSAGE}"
    assert TurnTrace.from_json(trace.to_json()).loop_stopped is True
