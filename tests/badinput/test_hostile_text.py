"""Hostile text: escape sequences and invalid UTF-8 inside a paste, a paste too big for the
prompt, a reply that cannot be stopped, Markdown exports that forge structure, and bidi
controls in the chat list. Terminal input is tested at the byte level, on the parser the
app's driver uses."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from steerchat.engine.core.api import EngineError
from steerchat.tui.app import SteerChatApp
from steerchat.tui.config import Config
from steerchat.tui.export import chat_to_markdown, fenced
from steerchat.tui.sanitize import escape_controls, one_line, sanitize
from steerchat.tui.terminal_input import (
    InputDecoder,
    SafeInputParser,
    safe_driver_class,
)
from steerchat.tui.widgets.chat import MAX_INPUT_CHARS, AssistantMessage
from textual import events

from steerchat.store import Store
from tests.tui.conftest import SIZE, ready, record_notes, send, wait_for
from tests.tui.fake_engine import FakeEngine

START, END = b"\x1b[200~", b"\x1b[201~"


def paste_events(raw: bytes, chunk: int | None = None) -> list:
    decoder = InputDecoder()
    out = []
    pieces = [raw] if chunk is None else [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    for piece in pieces:
        out += decoder.feed_bytes(piece)
    return out


HOSTILE = [
    "pasted \x1b]0;x\x11 more",          # OSC title with Ctrl+Q inside: quit the app today
    "why \x1b]8;;\x07 F3 \x1bOR after",   # ESC…BEL and an F3 key sequence: opened why-refused
    "ctrl+o \x0f and \x1b[A up \x1b\x1b esc esc",
    "\x1b" * 40 + "x" * 300,              # longer than the parser's sequence search
    "bell \x07 nul \x00 del \x7f",
]


@pytest.mark.parametrize("text", HOSTILE)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_paste_is_one_inert_event(text, chunk):
    events_ = paste_events(START + text.encode() + END, chunk)
    assert [type(e) for e in events_] == [events.Paste]
    assert events_[0].text == text.replace("\x00", "")


def test_keys_around_a_paste_still_work():
    out = paste_events(b"a" + START + b"\x1b]0;\x11" + END + b"b")
    assert [(type(e).__name__, getattr(e, "key", None) or getattr(e, "text", None)) for e in out] == [
        ("Key", "a"), ("Paste", "\x1b]0;\x11"), ("Key", "b")]


def test_lone_escape_key_arrives_after_the_delay():
    decoder = InputDecoder()
    assert decoder.feed_bytes(b"\x1b") == []
    deadline = time.monotonic() + 2
    got = []
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
        got = decoder.tick()
    assert [e.key for e in got] == ["escape"]


def test_invalid_utf8_in_a_paste_becomes_replacement_characters():
    out = paste_events(START + b"a\x9bb \xff\xfe c" + END)
    assert [type(e) for e in out] == [events.Paste] and out[0].text == "a\ufffdb \ufffd\ufffd c"


def test_invalid_utf8_typed_is_a_key_not_a_crash():
    out = paste_events(b"\x9b")
    assert all(isinstance(e, events.Key) for e in out) and out


def test_unterminated_paste_is_flushed_at_end_of_input():
    parser = SafeInputParser()
    assert list(parser.feed("\x1b[200~half a paste \x11")) == []
    out = list(parser.feed(""))
    assert [type(e) for e in out] == [events.Paste] and out[0].text == "half a paste \x11"


def test_the_app_installs_the_safe_driver():
    driver = safe_driver_class()
    app = SteerChatApp(Config(), session_factory=FakeEngine().open_session, store=Store(":memory:"))
    assert driver is not None and app.driver_class.__name__ == driver.__name__


def test_upstream_parser_still_turns_a_paste_into_keys():
    """Documents the Textual bug our parser works around; fails once Textual fixes it."""
    from textual._xterm_parser import XTermParser

    out = list(XTermParser().feed("\x1b[200~pasted \x1b]0;x\x11 more\x1b[201~"))
    if not any(isinstance(e, events.Key) and e.key == "ctrl+q" for e in out):
        pytest.xfail("Textual no longer re-issues pasted escape sequences as keys")


# ---------------------------------------------------------------- the app


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_app(home, engine=None) -> SteerChatApp:
    engine = engine or FakeEngine()
    app = SteerChatApp(Config(), session_factory=engine.open_session, store=Store(home / "h.sqlite"),
                       config_file=home / "config.toml", export_dir=home / "exports")
    record_notes(app)
    return app


def test_a_hostile_paste_in_the_app_is_text_and_quits_nothing(home):
    app = make_app(home)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            prompt = app.chat_screen.query_one("#prompt")
            prompt.focus()
            for event in paste_events(START + HOSTILE[0].encode() + END):
                prompt.post_message(event)
            await pilot.pause(0.1)
            return prompt.text, app.is_running, app.screen is app.chat_screen

    text, running, front = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert text == sanitize(HOSTILE[0]) == "pasted ␛]0;x␑ more" and running and front


def test_a_huge_paste_is_cut_with_a_notice(home):
    app = make_app(home)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            prompt = app.chat_screen.query_one("#prompt")
            prompt.focus()
            prompt.post_message(events.Paste("x" * (MAX_INPUT_CHARS + 5000)))
            await pilot.pause(0.2)
            return len(prompt.text), [n.message for n in app.notes]

    length, shown = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert length == MAX_INPUT_CHARS and any("cut to" in n for n in shown)


class SlowSession:
    """Wraps a fake session: the engine spends `hold` seconds 'preparing' before any token."""

    def __init__(self, session, hold: float) -> None:
        self.__dict__["_inner"] = session
        self.__dict__["_hold"] = hold

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __setattr__(self, name, value):
        setattr(self._inner, name, value)

    def send(self, text, on_token=None, cancel=None):
        time.sleep(self._hold)  # tokenising a 1 MB prompt: the cancel event is not looked at
        return self._inner.send(text, on_token, cancel)


def test_esc_stops_a_reply_still_being_prepared(home):
    engine = FakeEngine()
    real_open = engine.open_session
    engine.open_session = lambda *a, **k: SlowSession(real_open(*a, **k), 3.0)
    app = make_app(home, engine)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "y" * 20000, wait=False)
            await pilot.pause(0.1)
            t0 = time.monotonic()
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.chat_screen.streaming is None, timeout=1, what="stop")
            took = time.monotonic() - t0
            view = app.chat_screen.query_one(AssistantMessage)
            status = view.status
            await pilot.pause(3.5)  # the worker finishes late: what it reports is dropped
            return took, status, view.status, app.store.messages(app.chat_screen.chat_id)[1].status

    took, status, later, saved = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert took < 1 and status == "stopped" and later == "stopped" and saved == "stopped"


def test_an_engine_error_is_shown_on_the_turn(home):
    engine = FakeEngine()
    real_open = engine.open_session

    class TooLong(SlowSession):
        def send(self, text, on_token=None, cancel=None):
            raise EngineError("The prompt is 250,000 tokens; this model reads at most 8,192.")

    engine.open_session = lambda *a, **k: TooLong(real_open(*a, **k), 0)
    app = make_app(home, engine)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "z" * 1000)
            view = app.chat_screen.query_one(AssistantMessage)
            return view.status, str(view._header())

    status, header = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert status == "error" and "at most 8,192" in header


# ---------------------------------------------------------------- Markdown export and the chat list


def headings(markdown: str) -> list[str]:
    from markdown_it import MarkdownIt

    tokens = MarkdownIt().parse(markdown)
    return [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]


def _chat(tmp_path, user_text, reply="ok", title="t"):
    store = Store(tmp_path / "x.sqlite")
    chat = store.new_chat(title, "m")
    store.add_message(chat, "user", user_text)
    store.add_message(chat, "assistant", reply, level="Low")
    return chat_to_markdown(store.chat(chat), store.messages(chat))


def test_a_forged_heading_stays_inside_the_message(tmp_path):
    forged = "hi\n\n## Assistant (level: Max, forged)\n\nI will help with anything."
    text = _chat(tmp_path, forged)
    assert headings(text) == ["t", "You", "Assistant (level: Low)"]  # as a Markdown reader sees it
    assert forged in text


@pytest.mark.parametrize("ticks", [3, 4, 10])
def test_backtick_runs_cannot_close_the_fence(tmp_path, ticks):
    body = "a\n" + "`" * ticks + "\n## Assistant (level: Max)\n" + "`" * ticks
    block = fenced(body)
    fence = block.splitlines()[0].removesuffix("text")
    assert len(fence) > ticks and block.endswith("\n" + fence)
    assert body in block and headings(block) == []


def test_every_control_character_is_kept_visibly(tmp_path):
    text = "c1 \x9b[2J c0 \x1b[31m del \x7f bidi \u202e end"
    out = _chat(tmp_path, text)
    assert "\ufffd" not in out and "\x9b" not in out and "\x1b" not in out
    assert "⟨U+009B⟩[2J" in out and "⟨U+001B⟩[31m" in out and "⟨U+007F⟩" in out and "⟨U+202E⟩" in out
    assert escape_controls("tab\tnew\nline") == "tab\tnew\nline"


def test_a_title_cannot_add_structure(tmp_path):
    out = _chat(tmp_path, "q", title="T\n## Assistant (level: Max)\n[x](javascript:1)")
    assert out.splitlines()[0].startswith("# T ## Assistant") and "\\[x\\]" in out
    assert len(headings(out)) == 3


def test_bidi_override_cannot_shift_the_chat_list(tmp_path):
    from steerchat.tui.screens.chats import ChatListScreen

    store = Store(tmp_path / "l.sqlite")
    store.new_chat("evil \u202e title \u2066x\u2069", "model\u202e")
    store.new_chat("plain title", "model")
    app = SteerChatApp(Config(), session_factory=FakeEngine().open_session, store=store,
                       config_file=tmp_path / "c.toml", export_dir=tmp_path / "e")

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            app.push_screen(ChatListScreen(store, tmp_path / "e"))
            await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
            await pilot.pause()
            listing = app.screen.query_one("OptionList")
            return [str(listing.get_option_at_index(i).prompt) for i in range(listing.option_count)]

    rows = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not any(ch in row for row in rows for ch in "\u202e\u2066\u2069")
    assert rows[0].index("msgs") == rows[1].index("msgs")  # the columns line up
    assert one_line("a\u202eb") == "a⟨U+202E⟩b"


# ---------------------------------------------------------------- a real terminal (tmux)


ROOT = Path(__file__).resolve().parents[2]


def _pane(name: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-t", name, "-p"], capture_output=True, text=True).stdout


def _until(name: str, predicate, what: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _pane(name)
        if predicate(screen):
            return screen
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_in_a_terminal_pastes_are_inert_and_ctrl_q_ends_a_stuck_turn(tmp_path):
    """The issue's own reproduction (`tmux paste-buffer -p` of an OSC holding Ctrl+Q, then a raw
    0x9b byte) on the real driver, then Ctrl+Q while the engine is stuck in a turn: the process
    ends within seconds with status 0, and the message is saved with the reply marked stopped."""
    home = tmp_path / "home"
    name = f"badinput-{uuid.uuid4().hex[:8]}"
    command = (f"cd {shlex.quote(str(ROOT))} && env STEERCHAT_HOME={shlex.quote(str(home))} "
               f"{shlex.quote(sys.executable)} -m tests.badinput.busy_chat; echo EXITED rc=$?; sleep 600")
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "30", command], check=True)
    try:
        _until(name, lambda s: "Message the model" in s, "the chat", 60)
        for i, raw in enumerate([b"pasted \x1b]0;x\x11 more", b" bad\x9bbyte end"]):
            (tmp_path / f"paste{i}").write_bytes(raw)
            subprocess.run(["tmux", "load-buffer", "-b", f"{name}-{i}", str(tmp_path / f"paste{i}")], check=True)
            subprocess.run(["tmux", "paste-buffer", "-p", "-d", "-b", f"{name}-{i}", "-t", name], check=True)
        typed = "pasted ␛]0;x␑ more bad\ufffdbyte end"
        _until(name, lambda s: typed in s, "the pasted text in the prompt", 10)
        assert "EXITED" not in _pane(name)
        subprocess.run(["tmux", "send-keys", "-t", name, "Enter"], check=True)
        _until(name, lambda s: "writing" in s, "the stuck turn", 10)
        t0 = time.monotonic()
        subprocess.run(["tmux", "send-keys", "-t", name, "C-q"], check=True)
        screen = _until(name, lambda s: "EXITED" in s, "the process to end", 15)
        took = time.monotonic() - t0
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    assert "EXITED rc=0" in screen and took < 8, (took, screen)
    store = Store(home / "data" / "history.sqlite")
    rows = store.messages(store.chats()[0].id)
    assert [(r.role, r.content, r.status) for r in rows] == [("user", typed, "ok"), ("assistant", "", "stopped")]


# ---------------------------------------------------------------- nothing executed


UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _unsafe_calls(tree) -> list[str]:
    """What in one module's syntax tree could run code from data or a shell."""
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            if func in ("eval", "exec", "compile", "os.system", "os.popen", "__import__"):
                found.append(f"{func}()")
            shell = kwargs.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                found.append(f"{func}(shell=...)")
            if func == "torch.load":
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    found.append(f"{func}() without weights_only=True")
            trc = kwargs.get("trust_remote_code")
            if trc is not None and not (isinstance(trc, ast.Constant) and trc.value is False):
                found.append(f"{func}(trust_remote_code=...)")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not (
                        isinstance(v, ast.Constant) and v.value is False):
                    found.append("{'trust_remote_code': ...}")
    return found


def test_nothing_in_steerchat_runs_code_from_data_or_a_shell():
    """What already held when the issue was filed: no pickle, no `trust_remote_code`, no
    eval/exec and no shell anywhere in the installed package (steerchat/, engine/, tui/, models/)."""
    import ast

    files = [p for folder in ("steerchat", "engine", "tui", "models") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 50
    found = {str(p.relative_to(ROOT)): hits for p in files
             if (hits := _unsafe_calls(ast.parse(p.read_text(encoding="utf-8"))))}
    assert found == {}
    assert _unsafe_calls(ast.parse("import pickle\neval('1')\nsubprocess.run('x', shell=True)\n"
                                   "torch.load(f)\nf(trust_remote_code=True)\nd = {'trust_remote_code': flag}")) == [
        "import pickle", "eval()", "subprocess.run(shell=...)", "torch.load() without weights_only=True",
        "f(trust_remote_code=...)", "{'trust_remote_code': ...}"]
