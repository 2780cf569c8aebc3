"""Item 1: start, loading progress, offline fallback to the starter model, flags, startup time."""

import subprocess
import sys
import threading
import time

from conftest import SIZE, ready, screen_text, wait_for
from fake_engine import FakeEngine

from steerchat.engine.core.api import LoadProgress
from steerchat.tui import app as app_module
from steerchat.tui.app import SteerChatApp
from steerchat.tui.screens.loading import LoadingScreen


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


async def test_config_flags_reach_the_engine(make_app, engine):
    app = make_app(model="smollm2-135m", sae="none", level="Medium", system="Be brief.")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert engine.opened[0] == dict(model="smollm2-135m", sae="none", adapter=None, level="Medium",
                                        system="Be brief.", quant="auto")
        assert app.chat_screen.query_one("#slider").value == "Medium"


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


async def test_startup_to_interactive_screen_under_1_5_s(make_app, engine):
    engine.load_delay = 3.0  # the model is far from ready
    started = time.perf_counter()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadingScreen), what="loading screen")
        elapsed = time.perf_counter() - started
        assert app.session is None
        assert elapsed < 1.5, f"startup took {elapsed:.2f}s"
        app.exit()


def test_run_chat_merges_config_and_flags(home, monkeypatch):
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text('model = "phi-3-mini"\nlevel = "Low"\nsystem = "Be kind."\n')
    seen = {}

    def fake_run(self):
        seen.update(model=self.config.model, level=self.config.level, system=self.config.system,
                    sae=self.config.sae, warning=self.config_warning)

    monkeypatch.setattr(SteerChatApp, "run", fake_run)
    assert app_module.run_chat(model="smollm2-135m", sae=None, level=None, system=None) == 0
    assert seen == dict(model="smollm2-135m", level="Low", system="Be kind.", sae="auto", warning=None)


async def test_malformed_config_is_reported_and_app_starts(make_app, home):
    from steerchat.tui.config import load_config

    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("model = \n")
    config, warning = load_config(path)
    app = make_app(warning=warning)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        messages = [n.message for n in app._notifications]
        assert any("line 1" in m and "using the default settings" in m for m in messages)


def test_import_tui_app_does_not_import_torch():
    code = "import sys, steerchat.tui.app; assert 'torch' not in sys.modules, 'torch imported'; " \
           "assert 'steerchat.engine.runtime.session' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


STARTUP_PROBE = """
import asyncio, threading
from steerchat.tui.app import SteerChatApp
from steerchat.tui.config import Config
from steerchat.tui.screens.loading import LoadingScreen

never = threading.Event()

def slow_model(model, **kw):
    never.wait(30)  # the model is never ready within this probe

async def main():
    app = SteerChatApp(Config(), session_factory=slow_model)
    async with app.run_test(size=(120, 40)) as pilot:
        while not isinstance(app.screen, LoadingScreen):
            await pilot.pause(0.005)
        print("interactive", flush=True)
        never.set()

asyncio.run(main())
"""


def _startup_seconds() -> float:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", STARTUP_PROBE], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - started
    proc.wait(timeout=60)
    assert line.strip() == "interactive"
    return elapsed


def test_process_start_to_interactive_screen_under_1_5_s():
    """Wall time from launching Python to the loading screen taking keys, model not ready.

    Best of up to three launches: the test machine's cores are shared, and one cold or
    crowded launch says more about the neighbours than about the app.
    """
    times = []
    for _ in range(3):
        times.append(_startup_seconds())
        if times[-1] < 1.5:
            break
    assert min(times) < 1.5, f"startup took {', '.join(f'{t:.2f}' for t in times)} s"


async def test_config_warning_with_brackets_is_shown_literally(make_app, home):
    from steerchat.tui.config import load_config

    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[sampling]\ntemperature = "[bold]hot[/]"\n')
    config, warning = load_config(path)
    app = make_app(warning=warning)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        (note,) = [n for n in app._notifications if "temperature" in n.message]
        assert "line 2: 'temperature' must be a number" in note.message
        assert note.markup is False  # brackets from the file are never read as markup


def test_checklist_ticks_steps_before_the_current_one():
    from steerchat.tui.screens.loading import checklist

    assert checklist("quantise").plain.split() == ["✓", "Download", "✓", "Convert", "●", "Load", "/", "quantise",
                                                   "○", "SAE"]
    assert checklist("ready").plain.count("✓") == 4


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
