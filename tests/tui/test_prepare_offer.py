"""Opening a model without an SAE: one sentence says so and `steerchat prepare` is offered,
with the plan's estimate; accepting runs it (here a stand-in command) and shows its output."""

from __future__ import annotations

import sys

import pytest

from steerchat.tui.screens.prepare_offer import PrepareOfferScreen, no_sae_sentence
from tests.tui.conftest import SIZE, ready, wait_for

# stands in for `python -m steerchat prepare MODEL [--plan]`: prints a plan, or stage lines
FAKE_PREPARE = (sys.executable, "-c",
                "import sys\n"
                "if '--plan' in sys.argv:\n"
                "    print('stage time'); print('total        12 min     1.0 GiB')\n"
                "else:\n"
                "    print('[1/7] download'); print('[7/7] levels'); print('ready: ' + sys.argv[1])\n")


@pytest.fixture
def fake_prepare(monkeypatch):
    monkeypatch.setattr(PrepareOfferScreen, "command", FAKE_PREPARE)


async def test_a_model_without_an_sae_is_offered_preparation(make_app, engine, fake_prepare):
    engine.session_kw = {"sae_name": None}
    app = make_app(model="my-model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PrepareOfferScreen), what="the offer")
        offer = app.screen
        assert str(offer.query_one("#sentence").content) == no_sae_sentence("my-model")
        assert "has no SAE yet" in no_sae_sentence("my-model")
        await wait_for(pilot, lambda: "12" in str(offer.query_one("#estimate").content), what="the estimate")
        assert "estimate" in str(offer.query_one("#estimate").content)
        await pilot.click("#prepare")
        await wait_for(pilot, lambda: offer.finished is not None, timeout=20, what="prepare to finish")
        assert offer.finished is True
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="back to the chat")


async def test_not_now_goes_back_to_the_chat(make_app, engine, fake_prepare):
    engine.session_kw = {"sae_name": None}
    app = make_app(model="my-model")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, PrepareOfferScreen), what="the offer")
        await pilot.press("escape")
        await ready(pilot)


async def test_no_offer_with_an_sae_or_when_none_was_asked_for(make_app, engine, fake_prepare):
    app = make_app(model="my-model")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        assert app.screen is app.chat_screen
    engine.session_kw = {"sae_name": None}
    app = make_app(model="my-model", sae="none")
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.pause(0.1)
        assert app.screen is app.chat_screen
