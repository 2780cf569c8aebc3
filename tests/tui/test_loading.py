"""The loading screen: progress, the offline fallback to the starter model, other errors, a live UI."""

import threading

from steerchat.engine.core.api import LoadProgress
from steerchat.tui.screens.loading import LoadingScreen
from tests.tui.conftest import SIZE, ready, wait_for


async def test_loading_screen_shows_progress_then_chat(make_app, engine):
    gate = threading.Event()
    real = engine.open_session

    def slow_open(model, **kw):
        kw["progress"](LoadProgress("download", "model.safetensors", 60 * 2**20, 100 * 2**20))
        gate.wait(5)
        return real(model, **{**kw, "progress": None})

    app = make_app()
    app.session_factory = slow_open
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and "60.0 of 100.0 MiB" in str(
            app.screen.query_one("#detail").render()), what="download progress")
        assert "Downloading: model.safetensors" in str(app.screen.query_one("#stage").render())
        assert app.screen.query_one("#bar").percentage == 0.6
        gate.set()
        await ready(pilot)
        assert app.session.model_name == "phi-3-mini"


async def test_offline_says_so_and_offers_the_starter(make_app, engine):
    engine.missing = ("phi-3-mini",)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        error = str(app.screen.query_one("#error").render())
        assert error == "phi-3-mini is not downloaded and the machine is offline."
        assert app.screen.query_one("#starter").display
        await pilot.press("s")
        await ready(pilot)
        assert [o["model"] for o in engine.opened] == ["phi-3-mini", "smollm2-135m"]
        assert app.session.model_name == "smollm2-135m"


async def test_other_engine_errors_offer_quit_only(make_app, engine):
    from steerchat.engine.core.api import EngineError

    def broken(model, **kw):
        raise EngineError("The SAE file is damaged.")

    app = make_app(model="smollm2-135m")
    app.session_factory = broken
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        assert str(app.screen.query_one("#error").render()) == "The SAE file is damaged."
        assert not app.screen.query_one("#starter").display
        await pilot.click("#quit")
    assert app.return_code == 1


async def test_ui_responds_while_the_model_loads(make_app, engine):
    engine.load_delay = 3.0
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.05)
        assert isinstance(app.screen, LoadingScreen) and app.session is None
        await pilot.press("ctrl+p")  # the command palette opens while loading
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "CommandPalette", what="palette")
        assert app.session is None  # it answered keys before the model was ready
        await pilot.press("escape")
        await ready(pilot)


def test_checklist_ticks_steps_before_the_current_one():
    from steerchat.tui.screens.loading import checklist

    assert checklist("quantise").plain.split() == ["✓", "Download", "✓", "Convert", "●", "Load", "/", "quantise",
                                                   "○", "SAE"]
    assert checklist("ready").plain.count("✓") == 4


async def test_offline_screen_lists_both_offline_models_with_size_and_speed(make_app, engine):
    engine.missing = ("phi-3-mini",)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        starter = str(app.screen.query_one("#starter").label)
        qwen = app.screen.query_one("#use-qwen2_5-coder-0_5b")
        assert qwen.display and app.screen.query_one("#starter").display
        assert "smollm2-135m (98 MB, ~44 tok/s)" in starter
        assert "qwen2.5-coder-0.5b (491 MB, ~20 tok/s)" in str(qwen.label)


async def test_choosing_qwen_on_the_offline_screen_opens_it(make_app, engine):
    engine.missing = ("phi-3-mini",)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        await pilot.click("#use-qwen2_5-coder-0_5b")
        await ready(pilot)
        assert [o["model"] for o in engine.opened] == ["phi-3-mini", "qwen2.5-coder-0.5b"]
        assert app.session.model_name == "qwen2.5-coder-0.5b"


async def test_offline_screen_hides_the_model_that_failed(make_app, engine):
    engine.missing = ("qwen2.5-coder-0.5b",)
    app = make_app(model="qwen2.5-coder-0.5b")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed, what="failure")
        assert not app.screen.query_one("#use-qwen2_5-coder-0_5b").display
        assert app.screen.query_one("#starter").display


def test_assembling_counts_as_the_convert_step():
    from steerchat.tui.screens.loading import checklist

    assert checklist("assemble").plain.split()[:4] == ["✓", "Download", "●", "Convert"]
