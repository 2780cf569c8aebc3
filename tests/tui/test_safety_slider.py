"""Item 3: the safety slider, by keyboard and mouse, and during a reply."""

from steerchat.engine.core.trace import TurnTrace
from steerchat.tui.widgets.chat import AssistantMessage
from steerchat.tui.widgets.safety_slider import SafetySlider
from tests.tui.conftest import SIZE, finished, ready, screen_text, send, wait_for


async def test_arrow_keys_move_the_slider_and_the_session(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        slider = app.chat_screen.query_one(SafetySlider)
        assert slider.names == ["Off", "Guided", "Low", "Medium", "High", "Max"]
        await pilot.press("ctrl+s", "right", "right")
        assert slider.value == "Low" and engine.sessions[0].settings.level.name == "Low"
        await pilot.press("left")
        assert engine.sessions[0].settings.level.name == "Guided"
        await pilot.press("left", "left")  # stops at the end
        assert slider.value == "Off"
        await pilot.press("end")
        assert slider.value == "Max"
        assert "level Max" in screen_text(app, app.chat_screen.query_one("#status"))
        assert "Strongest clamp" in screen_text(app, slider)


async def test_clicking_a_notch_selects_it(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        slider = app.chat_screen.query_one(SafetySlider)
        text = screen_text(app, slider).splitlines()[1]
        column = text.index("High") + 1
        await pilot.click(SafetySlider, offset=(column, 1))
        assert slider.value == "High" and engine.sessions[0].settings.level.name == "High"


async def test_moving_during_a_reply_takes_effect_on_the_next_token(make_app, engine):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = engine.sessions[0]
        session.hold_at = 3
        await send(pilot, "hello", wait=False)
        await wait_for(pilot, lambda: session.reached.is_set(), what="token 3")
        await pilot.press("ctrl+s", "right", "right", "right")
        session.release.set()
        await finished(pilot)
        await pilot.pause()
        # the reply ending does not take the keyboard away from the slider: a key pressed as
        # it ends still moves the slider, not the cursor in the message box
        assert app.focused is app.chat_screen.query_one(SafetySlider)
        used = session.token_levels[0]
        assert used[:3] == ["Off"] * 3 and set(used[3:]) == {"Medium"}
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.level_label == "Off → Medium"
        assert "level Off → Medium" in str(view.query_one(".header").render())
        reply = app.store.messages(app.chat_screen.chat_id)[1]
        assert reply.level == "Off → Medium"
        assert TurnTrace.from_json(reply.trace_json).level_changes == [(3, "Medium")]


async def test_each_turn_keeps_its_own_level(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "one")
        await pilot.press("ctrl+s", "end")
        await send(pilot, "two")
        first, second = app.chat_screen.query(AssistantMessage)
        assert (first.level_label, second.level_label) == ("Off", "Max")
        assert [m.level for m in app.store.messages(app.chat_screen.chat_id)] == ["Off", "Off", "Max", "Max"]

