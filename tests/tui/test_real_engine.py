"""The app on the real engine and the starter model (slow: loads SmolLM2-135M on the CPU)."""

import pytest
from conftest import SIZE, finished, send, wait_for

from steerchat.engine.core.api import SamplingSettings
from steerchat.engine.core.trace import TurnTrace
from tests.conftest import requires_starter
from steerchat.tui.app import SteerChatApp
from steerchat.tui.config import Config
from steerchat.tui.widgets.chat import AssistantMessage


@pytest.mark.slow
@requires_starter
async def test_chat_on_the_starter_model(home, shared_models_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (home / "cache").mkdir(parents=True, exist_ok=True)
    (home / "cache" / "models").symlink_to(shared_models_cache, target_is_directory=True)
    app = SteerChatApp(Config(model="smollm2-135m", sampling=SamplingSettings(max_new_tokens=12)))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None, timeout=240, what="starter model load")
        await pilot.pause(0.1)
        assert app.chat_screen.query_one("#slider").names == app.session.levels.names
        await send(pilot, "Say hello in one word.", wait=False)
        await wait_for(pilot, lambda: app.chat_screen.streaming is None, timeout=120, what="reply")
        await finished(pilot)
        view = app.chat_screen.query_one(AssistantMessage)
        assert view.status == "ok" and view.text.strip()
        reply = app.store.messages(app.chat_screen.chat_id)[1]
        trace = TurnTrace.from_json(reply.trace_json)
        assert trace.model == "smollm2-135m" and trace.reply == view.text
