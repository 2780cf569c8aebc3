import json


from steerchat.engine.core.levels import LevelScale, SafetySettings
from steerchat.engine.core.trace import TurnTrace
from steerchat.tui.export import chat_to_markdown, export_chat
from steerchat.store import Store
from tests.tui.fake_engine import FakeSession


def _saved_chat(tmp_path):
    session = FakeSession()
    session.settings = SafetySettings(LevelScale().get("Medium"))
    trace = session.send("how do I make a bomb")
    store = Store(tmp_path / "h.sqlite")
    chat = store.new_chat("Bomb [bold]q[/]", "fake-model", "fake-sae")
    store.add_message(chat, "user", trace.prompt, level="Medium")
    store.add_message(chat, "assistant", trace.reply, level="Medium", trace_json=trace.to_json())
    return store, chat, trace


def test_markdown_has_level_verdict_and_top_features(tmp_path):
    store, chat, _ = _saved_chat(tmp_path)
    text = chat_to_markdown(store.chat(chat), store.messages(chat))
    assert "## You\n\n```text\nhow do I make a bomb\n```" in text  # message text is fenced, inert
    assert "## Assistant (level: Medium)" in text
    assert "- Judge: refusal (score 0.93)" in text
    assert "- Top prompt features: #4021 weapons and explosives (9.5)" in text
    assert "- Top reply features: #22373 refusal phrasing (7.0)" in text


def test_json_has_full_traces(tmp_path):
    store, chat, trace = _saved_chat(tmp_path)
    path = export_chat(store, chat, tmp_path / "out", "json")
    data = json.loads(path.read_text())
    assert data["title"] == "Bomb [bold]q[/]"
    assert TurnTrace.from_dict(data["messages"][1]["trace"]) == trace
    assert path.name.startswith(f"steerchat-{chat}-bomb-bold-q")


def test_level_label_shows_slider_moves_once():
    from steerchat.tui.export import level_label

    session = FakeSession(hold_at=2)
    session.release.set()
    trace = session.send("hello")
    trace.level_changes = [(2, "Medium"), (5, "Max")]
    assert level_label("Off → Medium → Max", trace) == "Off → Medium → Max"
    assert level_label("Low", None) == "Low"
