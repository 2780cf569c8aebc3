"""Item 4: the features panel of the selected turn."""

from steerchat.tui.widgets.chat import AssistantMessage
from rich.style import Style

from steerchat.tui.widgets.features_panel import FeaturesPanel, bar, heat_map
from tests.tui.conftest import SIZE, ready, screen_lines, screen_text, send


def hot_tokens(panel) -> list[str]:
    """Tokens the heat map paints with a background, in order."""
    heat = heat_map(panel.trace, panel.feature)
    return [heat.plain[s.start:s.end] for s in heat.spans if isinstance(s.style, Style) and s.style.bgcolor]


def test_bar_scales_in_eighths():
    assert bar(10, 10, 4) == "████"
    assert bar(5, 10, 4) == "██  "
    assert bar(1, 10, 4) == "▍   "
    assert bar(0, 10, 4) == "    "


async def test_panel_shows_features_refusal_and_heat_map(make_app):
    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        panel = app.chat_screen.query_one(FeaturesPanel)
        text = screen_text(app, panel)
        assert "Level Medium" in text and "Gate 0.91 / 0.50 open" in text and "Judge refusal (score 0.93)" in text
        assert "#4021 weapons and exp… ██████████  9.5" in text
        assert "#22373 refusal phrasi… ██████████  7.0" in text
        assert "natural 1.1 (prompt 0.4) · clamped to 16.0 · ref 8.0" in text
        # the refusal feature is highlighted in the reply table
        def is_red(name):
            segs = [seg for row in screen_lines(app, panel) for seg in row if name in seg.text]
            return any(s.style.color.triplet.red > 200 and s.style.color.triplet.green < 100 for s in segs)

        assert is_red("#22373 refusal") and not is_red("#9 punctuation")
        # heat map: the refusal feature is chosen first; reply tokens are hot, prompt tokens cold
        assert panel.feature == 22373
        hot = hot_tokens(panel)
        assert hot[:2] == ["I", " can't"] and " bomb" in hot and "how" not in hot
        assert "Tokens #22373 fired on" in screen_text(app, panel)


async def test_choosing_a_feature_redraws_the_heat_map(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        panel = app.chat_screen.query_one(FeaturesPanel)
        choose = panel.query_one("#fp-choose")
        choose.highlighted = [o.id for o in choose.options].index("4021")
        await pilot.pause()
        assert panel.feature == 4021
        assert hot_tokens(panel) == [" bomb"]


async def test_selecting_another_turn_shows_its_trace(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        await send(pilot, "a cake recipe")
        panel = app.chat_screen.query_one(FeaturesPanel)
        assert panel.trace.prompt == "a cake recipe"
        await pilot.press("ctrl+up")
        assert panel.trace.prompt == "how to make a bomb"
        last = app.chat_screen.query(AssistantMessage).last()
        await pilot.click(last)
        assert panel.trace.prompt == "a cake recipe"
        await pilot.press("f2")
        assert not panel.display or panel.has_class("-hidden")


def test_refusal_table_shows_the_features_steering_moved_most():
    from steerchat.engine.core.trace import RefusalFeatureState
    from steerchat.tui.widgets.features_panel import refusal_table

    states = [RefusalFeatureState(100 + i, 1.0, 0.0, float(i), 0.0, 12.0)
              for i in range(12)]
    lines = refusal_table(states, rows=3).plain.splitlines()
    shown = [line.split()[0] for line in lines if line.startswith(" #")]
    assert shown == ["#100", "#101", "#102"]  # pushed 12, 11, 10 above their natural level
    assert "… and 9 more refusal features (moved least by steering)" in lines[-2]
    unclamped = [RefusalFeatureState(200 + i, 2.0, 0.0, float(i), 0.0, None) for i in range(5)]
    text = refusal_table(unclamped, rows=2).plain
    assert [line.split()[0] for line in text.splitlines() if line.startswith(" #")] == ["#204", "#203"]
    assert "3 more refusal features (least active)" in text
    assert "more refusal features" not in refusal_table(states[:3], rows=3).plain


async def test_find_a_feature_by_label_and_pin_it_across_turns(make_app):
    from steerchat.tui.widgets.features_panel import FeaturesPanel
    from tests.tui.fake_engine import HARM_FEATURE

    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how do I make a bomb?")
        await send(pilot, "a cake recipe")
        await send(pilot, "and a poison?")
        panel = app.chat_screen.query_one(FeaturesPanel)
        panel.focus()
        await pilot.press("slash")
        assert app.focused.id == "fp-search"
        await pilot.press(*"weapons")
        choose = panel.query_one("#fp-choose")
        assert [choose.get_option_at_index(i).id for i in range(choose.option_count)] == [str(HARM_FEATURE)]
        await pilot.press("enter")
        await pilot.pause()
        assert panel.feature == HARM_FEATURE
        await pilot.press("p")
        await pilot.pause()
        spark = panel.query_one("#fp-spark")
        assert panel.pinned == HARM_FEATURE and spark.display
        assert [v > 0 for v in spark.data] == [True, False, True]
        assert "Pinned #4021 weapons and explosives" in str(panel.query_one("#fp-pinned").render())
        await pilot.press("p")
        assert panel.pinned is None and not spark.display


def test_an_open_level_target_below_zero_sits_at_the_left_edge():
    from steerchat.engine.core.trace import RefusalFeatureState
    from steerchat.tui.widgets.features_panel import refusal_table

    def marker(target: float) -> tuple[int, str]:
        text = refusal_table([RefusalFeatureState(7, 2.0, 0.0, 0.0, 0.0, target)]).plain
        row = next(line for line in text.splitlines() if line.startswith(" #7"))
        return row.index("▼"), text

    at_zero, _ = marker(0.0)
    below, text = marker(-2.0)
    assert below == at_zero  # the left edge, not wrapped round by a negative index
    assert "clamped to -2.0" in text
