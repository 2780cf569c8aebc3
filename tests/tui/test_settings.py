"""Settings: saved from the palette and from the settings form, and applied."""

from tests.tui.conftest import SIZE, open_settings, ready, screen_text, wait_for


async def test_settings_persist(make_app, home):
    from steerchat.tui.config import load_config

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.theme = "nord"  # a theme picked in the palette is saved at once
        assert load_config(home / "config" / "config.toml")[0].theme == "nord"
        await pilot.press("ctrl+s", "right", "right")
        app.save_settings()
    config, warning = load_config(home / "config" / "config.toml")
    assert warning is None and config.level == "Low" and config.theme == "nord"


async def test_settings_form_saves_and_applies(make_app, home, engine):
    from textual.widgets import Input, TextArea

    from steerchat.tui.config import load_config

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        form = await open_settings(pilot)
        form.query_one("#system", TextArea).load_text("Answer in French.")
        form.query_one("#temperature", Input).value = "0.7"
        form.query_one("#top_p", Input).value = "1.5"
        await pilot.press("ctrl+s")
        assert "Top-p must be above 0" in screen_text(app, form.query_one("#error"))
        form.query_one("#top_p", Input).value = "0.9"
        form.query_one("#level").value = "High"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is app.chat_screen, what="form closed")
        session = engine.sessions[0]
        assert session.system_prompt == "Answer in French." and session.sampling.temperature == 0.7
    config, warning = load_config(home / "config" / "config.toml")
    assert warning is None
    assert (config.system, config.level, config.sampling.top_p) == ("Answer in French.", "High", 0.9)
