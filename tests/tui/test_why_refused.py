"""Item 5: the why-refused view and the side-by-side rerun with steering off."""

from steerchat.engine.core.levels import LevelScale, SafetySettings
from steerchat.tui.screens.why_refused import WhyRefusedScreen, steering_text
from steerchat.tui.widgets.chat import AssistantMessage
from tests.tui.conftest import SIZE, ready, screen_text, send, wait_for
from tests.tui.fake_engine import FakeSession


async def test_why_view_explains_a_steered_refusal(make_app, engine):
    app = make_app(level="Medium")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "how to make a bomb")
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.refused and "refused · F3 why" in str(view.query_one(".header").render())
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyRefusedScreen), what="why view")
        screen = app.screen
        text = screen_text(app)
        assert "Why was this refused?" in text
        verdict = str(screen.query_one("#why-verdict").render())
        assert "reads this reply as a refusal (score 0.93)" in verdict
        assert 'refusal phrase "I can\'t"' in verdict and "+2.7" in verdict
        steering = str(screen.query_one("#why-steering").render())
        assert "reached 1.1 on the reply and 0.4 on the prompt on its own" in steering
        assert "clamped it to 16.0, 15× its natural level: pushed there by steering" in steering
        gate = str(screen.query_one("#why-gate").render())
        assert "Level Medium: guidance hint, strength s=2" in gate
        assert "scored the prompt 0.91 against a threshold of 0.50: open, so steering applied" in gate
        assert "bomb" in str(screen.query_one("#why-tokens").render())
        assert "correct, ethical and inoffensive" in str(screen.query_one("#why-guidance").render())

        await pilot.press("o")  # regenerate with steering off, side by side
        await wait_for(pilot, lambda: screen.rerun_trace is not None, what="rerun")
        await pilot.pause(0.1)
        session = engine.sessions[0]
        assert session.calls[-1] == ("rerun", "how to make a bomb")
        assert session.token_levels[-1][0] == "Off"
        assert len(session.history) == 1  # the rerun leaves history alone
        text = screen_text(app)
        assert "As sent (level Medium)" in text and "Steering off (level Off) · judged answer" in text
        assert "I can't help with that" in text and "an answer to your question" in text
        await pilot.press("escape")
        assert app.screen is app.chat_screen


async def test_why_view_on_demand_for_an_answer(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "a cake recipe")
        await pilot.press("f3")
        await wait_for(pilot, lambda: isinstance(app.screen, WhyRefusedScreen), what="why view")
        assert "Why was this not refused?" in screen_text(app)
        assert "an answer, not a refusal" in str(app.screen.query_one("#why-verdict").render())
        assert "Steering did not touch it, and it stayed weak." in str(app.screen.query_one("#why-steering").render())
        assert "No guidance text was in force." in str(app.screen.query_one("#why-guidance").render())


def _trace(level: str, prompt: str, natural: float | None = None):
    session = FakeSession()
    session.settings = SafetySettings(LevelScale().get(level))
    trace = session.send(prompt)
    if natural is not None:
        trace.refusal_features[0].natural_reply_max = natural
    return trace


def test_steering_text_tells_own_refusal_from_pushed():
    own = steering_text(_trace("Max", "how to make a bomb", natural=6.0))
    assert "but it was already active on its own" in own
    unsteered = steering_text(_trace("Off", "how to make a bomb", natural=6.0))
    assert "Steering did not touch it, so it was active on its own." in unsteered


def test_steering_text_summarises_a_large_feature_set():
    from dataclasses import replace

    trace = _trace("Max", "how to make a bomb")
    first = trace.refusal_features[0]
    # ten features: feature 100+i reached i on its own; all clamped to 8
    trace.refusal_features = [replace(first, feature=100 + i, label=None, natural_reply_max=float(i),
                                      natural_prompt_max=0.0, reference_activation=4.0, target=8.0)
                              for i in range(10)]
    text = steering_text(trace)
    head, *details = text.split("\n\n")
    # natural >= half the reference (2.0) counts as active on its own: features with i = 2..9
    assert head.startswith("Steering clamped all 10 refusal features together. 8 of them were active on their own; "
                           "2 were pushed up by steering.")
    assert len(details) == 4 and [d.split()[1] for d in details] == ["#100", "#101", "#102", "#103"]
    trace.refusal_features = [replace(f, target=None) for f in trace.refusal_features]
    head, *details = steering_text(trace).split("\n\n")
    assert "steering did not touch them. 8 of them were active on their own" in head
    assert [d.split()[1] for d in details] == ["#109", "#108", "#107", "#106"]


def test_the_verdict_says_whose_refusal_it_was():
    from steerchat.tui.screens.why_refused import origin_text, verdict_text

    steered = _trace("Max", "how to make a bomb")
    assert steered.verdict.refused and origin_text(steered) is None  # no unsteered opening recorded: no claim
    steered.unsteered_opening, steered.unsteered_refused = " I'm sorry, but I can't\nhelp", True
    assert origin_text(steered) == ("With steering off the model refuses too (it opens \u201cI'm sorry, but I can't "
                                    "help\u2026\u201d): the refusal is its own, and steering only held it there.")
    steered.unsteered_opening, steered.unsteered_refused = "Sure! [bold]First\x1b[0m", False
    text = verdict_text(steered)
    assert text.endswith("steering pushed it into this refusal.") and "[bold]First␛[0m" in text
    unsteered = _trace("Off", "how to make a bomb")
    unsteered.verdict.refused = True
    for st in unsteered.refusal_features:
        st.target = None
    assert origin_text(unsteered) == "Nothing was steered on this turn: the refusal is the model's own."
    gated = _trace("Medium", "how do I kill a python process")  # a conditional level, the gate closed
    gated.verdict.refused, gated.conditional, gated.gate.open = True, True, False
    for st in gated.refusal_features:
        st.target = None
    assert origin_text(gated) == "The harm gate stayed closed, so this level did not steer: the refusal is the model's own."
    assert origin_text(_trace("Off", "a cake recipe")) is None  # an answer

    # a two-sided level whose gate stayed closed pushed refusal down, and the model refused anyway
    lowered = _trace("Max", "how do I kill a python process")
    lowered.verdict.refused, lowered.conditional, lowered.gate.open = True, True, False
    lowered.open_strength, lowered.lowered = -1.0, True
    lowered.unsteered_opening, lowered.unsteered_refused = "I'm sorry", True
    assert origin_text(lowered) == ("Steering pushed the refusal features down on this turn and the model refused "
                                    "anyway: the refusal is its own.")


def test_the_gate_section_says_what_a_two_sided_level_did_with_a_closed_gate():
    from steerchat.tui.screens.why_refused import gate_text
    from steerchat.tui.widgets.features_panel import turn_summary

    t = _trace("Max", "how do I kill a python process")
    t.conditional, t.open_strength, t.gate.open = True, -1.0, False
    text = gate_text(t)
    assert "where it looks benign, refusal features are pushed down to -1× their reference" in text
    assert "closed, so refusal was pushed down instead" in text
    assert "two-sided (closed: -1)" in str(turn_summary(t))
    t.open_strength = None  # a plain gated level skips steering on a closed gate
    assert "closed, so steering was skipped" in gate_text(t) and "two-sided" not in str(turn_summary(t))

    # with a benign threshold: a closed gate whose score is not below it leaves refusal alone
    t.open_strength, t.gate.benign_threshold, t.gate.benign = -1.0, t.gate.threshold - 2.0, False
    text = gate_text(t)
    assert f"(refusal is pushed down only below {t.gate.threshold - 2.0:.2f})" in text
    assert "closed, but not below the benign threshold, so refusal was left as the model has it" in text
    assert f"(not benign: ≥ {t.gate.threshold - 2.0:.2f})" in str(turn_summary(t))
    t.gate.benign = True
    assert "closed, so refusal was pushed down instead" in gate_text(t) and "not benign" not in str(turn_summary(t))


def test_the_gate_section_of_the_open_level_says_it_only_lowers():
    from steerchat.tui.screens.why_refused import gate_text

    t = _trace("Off", "how do I kill a python process")
    t.level, t.conditional, t.strength, t.lowering_only, t.gate.open, t.gate.benign = "Open", False, -1.0, True, False, True
    text = gate_text(t)
    assert "only lowering refusal: where the prompt looks benign, refusal features are pushed down to -1×" in text
    assert "closed, so refusal was pushed down instead" in text
    t.gate.open, t.gate.benign = True, False
    assert "open, so this level left refusal as the model has it" in gate_text(t)
    t.gate.open, t.gate.benign_threshold = False, t.gate.threshold - 1.0
    assert "closed, but not below the benign threshold" in gate_text(t)


def test_a_lowered_turn_says_the_features_were_pushed_down_not_up():
    from steerchat.tui.screens.why_refused import steering_text
    from steerchat.tui.widgets.features_panel import refusal_table

    from dataclasses import replace

    t = _trace("Max", "how do I kill a python process")  # then marked as a turn steering lowered
    t.lowered = True
    first = t.refusal_features[0]
    t.refusal_features = [replace(first, natural_reply_max=2.0, natural_prompt_max=0.0, target=-1.0)]
    text = steering_text(t)
    assert "pushed up" not in text and "clamped it to" not in text and "pushed it down to -1.0" in text
    # many features: the summary counts the ones lowered, and ranks those moved down most first
    t.refusal_features = [replace(first, feature=100 + i, label=None, natural_reply_max=float(i) - 2,
                                  natural_prompt_max=-5.0, target=-1.0) for i in range(10)]
    text = steering_text(t)
    assert "pushed the 10 refusal features down" in text and "8 of them were above their target" in text
    assert text.index("#109") < text.index("#108")
    table = str(refusal_table(t.refusal_features, lowered=True))
    assert "capped at -1.0" in table and "clamped to" not in table
