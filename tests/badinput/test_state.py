"""Broken state: a damaged, locked or unwritable history database, a broken config.toml and
a damaged converted-model cache. The chat survives each one: it starts, says what happened
in one line, a message can be sent and is saved somewhere, and nothing is deleted."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from steerchat.tui.app import SteerChatApp
from steerchat.tui.config import Config, load_config, save_config
from steerchat.tui.widgets.chat import AssistantMessage

from steerchat.store import Store, history
from tests.tui.conftest import SIZE, ready, record_notes, send, wait_for
from tests.tui.fake_engine import FakeEngine


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def db_path(home: Path) -> Path:
    return home / "data" / "history.sqlite"


def app_for(home: Path, config: Config | None = None, warning: str | None = None) -> SteerChatApp:
    # store=None: the app opens the history itself, as `steerchat` does.
    app = SteerChatApp(config or Config(), session_factory=FakeEngine().open_session, config_warning=warning,
                       config_file=home / "config" / "config.toml", export_dir=home / "exports")
    record_notes(app)
    return app


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def notes(app) -> str:
    return "\n".join(n.message for n in app.notes)


async def chat_once(app, text: str = "hello after the fault"):
    """Start the app, send one message; return what the app's store holds for it."""
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, text)
        chat_id = app.chat_screen.chat_id
        for _ in range(100):
            if not app.store.pending:
                break
            await pilot.pause(0.05)
        saved = [m.content for m in app.store.messages(chat_id)]
        shown = notes(app)
        assert all("\n" not in n.message for n in app.notes), shown  # each warning one line
    return saved, shown


def damaged_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "data").iterdir() if ".damaged-" in p.name)


# ---------------------------------------------------------------- history database


def test_random_bytes_database(home):
    db = db_path(home)
    db.parent.mkdir(parents=True)
    junk = os.urandom(8192)
    db.write_bytes(junk)
    app = app_for(home)
    saved, shown = asyncio.run(chat_once(app))
    assert "damaged" in shown and "moved it to history.sqlite.damaged-" in shown
    assert saved[0] == "hello after the fault" and len(saved) == 2 and saved[1]
    assert [p.read_bytes() for p in damaged_files(home)] == [junk]  # moved aside, not deleted
    assert Store(db).messages(1)[0].content == "hello after the fault"


def test_truncated_database(home):
    db = db_path(home)
    store = Store(db)
    chat = store.new_chat("old", "m")
    for _ in range(200):
        store.add_message(chat, "user", "y" * 400)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    db.write_bytes(db.read_bytes()[:5000])
    saved, shown = asyncio.run(chat_once(app_for(home)))
    assert "damaged" in shown and damaged_files(home)
    assert saved[0] == "hello after the fault"


def test_read_only_folder(home, monkeypatch):
    db = db_path(home)
    store = Store(db)
    store.new_chat("an old chat", "m")
    store.close()
    before = db.read_bytes()
    monkeypatch.setattr(history, "_can_write", lambda folder: False)  # root ignores chmod
    app = app_for(home)
    saved, shown = asyncio.run(chat_once(app))
    assert "cannot be written" in shown and "memory" in shown
    assert app.store.in_memory and saved[0] == "hello after the fault"
    assert "an old chat" in [c.title for c in app.store.chats()]
    assert db.read_bytes() == before


def test_immutable_file(home, monkeypatch):
    db = db_path(home)
    Store(db).close()
    real = history.os.access
    monkeypatch.setattr(history.os, "access", lambda p, m: False if str(p) == str(db) else real(p, m))
    app = app_for(home)
    saved, shown = asyncio.run(chat_once(app))
    assert "memory" in shown and saved[0] == "hello after the fault"


def test_lock_held_by_another_process_at_start(home):
    db = db_path(home)
    Store(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        t0 = time.monotonic()
        app = app_for(home)

        async def scenario():
            async with app.run_test(size=SIZE) as pilot:
                await ready(pilot)
                await send(pilot, "typed while locked")
                assert app.store.pending  # waiting in the retry queue, not lost
                other.execute("ROLLBACK")
                await wait_for(pilot, lambda: not app.store.pending, timeout=5, what="queued writes")
                return app.store.messages(app.chat_screen.chat_id)

        rows = asyncio.run(scenario())
        assert time.monotonic() - t0 < 20
        assert rows[0].content == "typed while locked" and rows[1].status == "ok"
    finally:
        other.close()
    assert Store(db).messages(1)[0].content == "typed while locked"


def test_lock_taken_while_chatting_does_not_freeze(home):
    db = db_path(home)
    app = app_for(home)
    other = None

    async def scenario():
        nonlocal other
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "first")
            other = sqlite3.connect(db, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            await send(pilot, "second, typed during the lock")
            took = time.monotonic() - t0
            other.execute("ROLLBACK")
            await wait_for(pilot, lambda: not app.store.pending, timeout=5, what="queued writes")
            return took

    took = asyncio.run(scenario())
    other.close()
    assert took < 3.0  # the old code froze 5 s and then crashed
    rows = Store(db).messages(1)
    assert [r.content for r in rows if r.role == "user"] == ["first", "second, typed during the lock"]


def test_invalid_utf8_row_and_corrupt_trace_open_from_the_chat_list(home):
    from steerchat.tui.screens.chats import ChatListScreen

    db = db_path(home)
    store = Store(db)
    chat = store.new_chat("bad bytes", "m")
    store.add_message(chat, "user", "question")
    store.add_message(chat, "assistant", "answer", trace_json='{"not": "a trace"')
    store.close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE messages SET content = CAST(X'6F6BFF9B21' AS TEXT) WHERE role='user'")
    raw.commit()
    raw.close()
    app = app_for(home)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await pilot.press("ctrl+o")
            await wait_for(pilot, lambda: isinstance(app.screen, ChatListScreen), what="chat list")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.chat_screen.chat_id == chat, what="chat opened")
            await pilot.pause()
            user = app.chat_screen.query("UserMessage").first()
            reply = app.chat_screen.query_one(AssistantMessage)
            return user.text, reply.text, reply.trace, notes(app)

    user, reply, trace, shown = asyncio.run(scenario())
    assert user == "ok\ufffd\ufffd!" and reply == "answer" and trace is None
    assert "could not be read and was dropped" in shown


CRASHING_WRITER = """
import sys, time
from steerchat.store import Store
store = Store(sys.argv[1])
chat = store.new_chat("before the crash", "m")
for i in range(5):
    store.add_message(chat, "user", f"question {i}")
    store.add_message(chat, "assistant", f"answer {i}", level="Low")
store.add_message(chat, "user", "the last question")
reply = store.add_message(chat, "assistant", "", status="streaming")
text = ""
while True:  # a reply being written, saved as it grows, until the process is killed
    text += "word "
    store.update_message(reply, content=text)
    if len(text) == 50:
        print("streaming", flush=True)
"""


@pytest.mark.parametrize("after_s", [0.0, 0.2, 0.5])
def test_kill_9_while_a_reply_is_saved(tmp_path, after_s):
    """What already held when the issue was filed (3 of 3 kill -9 crashes): every message
    back, the partial reply marked interrupted, the integrity check ok."""
    import signal
    import subprocess
    import sys

    from steerchat.store import open_store

    db = tmp_path / "data" / "history.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "streaming"
        time.sleep(after_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    store, warning = open_store(db)
    assert warning is None and store.recovered == 1
    rows = store.messages(1)
    assert [r.content for r in rows[:11]] == [x for i in range(5) for x in (f"question {i}", f"answer {i}")] + [
        "the last question"]
    last = rows[11]
    assert len(rows) == 12 and last.status == "interrupted"
    assert len(last.content) >= 50 and last.content == "word " * (len(last.content) // 5)
    store.close()
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------- config.toml


CONFIG = '''# my settings
model = "smollm2-135m"
system = "Answer in French."   # keep this
level = Medium
theme = "nord"
future_key = "from a newer steerchat"

[sampling]
temperature = 0.7
'''


def test_syntax_error_keeps_the_valid_keys(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config, warning = load_config(path)
    assert config.model == "smollm2-135m" and config.system == "Answer in French."
    assert config.theme == "nord" and config.sampling.temperature == 0.7
    assert "line 4" in warning and "ignored" in warning


def test_saving_a_broken_config_backs_it_up_and_keeps_comments(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config, _ = load_config(path)
    config.sampling.max_new_tokens = 64
    save_config(config, path)
    backups = list(tmp_path.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == CONFIG
    text = path.read_text()
    assert "# my settings" in text and "# keep this" in text and 'future_key = "from a newer steerchat"' in text
    assert "level = Medium" in text  # the bad line stays, as a comment
    again, warning = load_config(path)
    assert again.system == "Answer in French." and again.sampling.max_new_tokens == 64
    assert warning is not None and "future_key" in warning  # unknown keys are kept, and still reported


def test_saving_a_valid_config_keeps_comments_without_backup(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('# top comment\nmodel = "smollm2-135m"  # mine\nmystery = 1\n')
    config, _ = load_config(path)
    config.level = "High"
    save_config(config, path)
    text = path.read_text()
    assert "# top comment" in text and "# mine" in text and "mystery = 1" in text and 'level = "High"' in text
    assert not list(tmp_path.glob("config.toml.bak-*"))


def test_invalid_utf8_config_is_a_warning(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'model = "smollm2-135m"\nsystem = "caf\xe9"\n')
    config, warning = load_config(path)
    assert config.model == "smollm2-135m" and "UTF-8" in warning and "line 2" in warning


@pytest.mark.parametrize("key,value", [
    ("temperature", "-1.0"), ("temperature", "nan"), ("temperature", "inf"),
    ("top_p", "5.0"), ("top_p", "0"), ("max_new_tokens", "0"), ("repetition_penalty", "0"),
    ("repetition_penalty", "-2.0"),
])
def test_sampling_values_out_of_range(tmp_path, key, value):
    path = tmp_path / "config.toml"
    path.write_text(f'[sampling]\ntemperature = 0.5\n{key} = {value}\n' if key != "temperature"
                    else f'[sampling]\ntop_p = 0.9\n{key} = {value}\n')
    config, warning = load_config(path)
    default = getattr(Config().sampling, key)
    assert getattr(config.sampling, key) == default and f"'{key}'" in warning and "line 3" in warning
    other = "top_p" if key == "temperature" else "temperature"
    assert getattr(config.sampling, other) == (0.9 if other == "top_p" else 0.5)  # only that key falls back


BROKEN_CONFIGS = {  # file bytes, what the warning names, whether saving backs the file up, a valid key kept
    "syntax-error": (CONFIG.encode(), ["not valid TOML", "line 4"], True, ("system", "Answer in French.")),
    "invalid-utf8": (b'# mine\nmodel = "smollm2-135m"\nsystem = "caf\xe9"\n', ["UTF-8", "line 3"], True,
                     ("model", "smollm2-135m")),
    "top-p-5": (b'# mine\n[sampling]\ntemperature = 0.25\ntop_p = 5.0\n', ["'top_p'", "line 4"], False,
                ("temperature", 0.25)),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_app_survives_a_broken_config(home, case):
    raw, named, backed_up, (key, value) = BROKEN_CONFIGS[case]
    path = home / "config" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw)
    config, warning = load_config(path)
    app = app_for(home, config, warning)

    async def scenario():
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            await send(pilot, "hello")
            app.save_settings()
            return notes(app), [m.content for m in app.store.messages(app.chat_screen.chat_id)]

    shown, saved = asyncio.run(scenario())
    assert all(part in shown for part in named), shown
    assert saved[0] == "hello" and len(saved) == 2
    backups = list(path.parent.glob("config.toml.bak-*"))
    assert [b.read_bytes() for b in backups] == ([raw] if backed_up else [])  # never overwritten unbacked
    assert ("# keep this" if case == "syntax-error" else "# mine") in path.read_text(encoding="utf-8")
    again, _ = load_config(path)
    assert getattr(again.sampling if key == "temperature" else again, key) == value


# ---------------------------------------------------------------- converted-model cache


def _fake_cache(folder: Path, weights: bytes = b"\0" * 4096) -> None:
    from steerchat.engine.runtime import loading

    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    (folder / "model.safetensors").write_bytes(weights)
    files = {}
    for p in sorted(folder.iterdir()):
        st = p.stat()
        files[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    (folder / "steerchat-cache.json").write_text(json.dumps({"format": loading.CACHE_FORMAT, "files": files}))


def _valid_ignoring_safetensors(folder, monkeypatch, **kw):
    from steerchat.engine.runtime import loading

    class _Open:  # the fake weights are not safetensors; the manifest check is what is tested
        def __init__(self, *a, **k): pass
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def keys(self): return []

    import safetensors
    monkeypatch.setattr(safetensors, "safe_open", _Open)
    return loading.cache_is_valid(folder, **kw)


def test_cache_rejects_a_garbage_template_of_the_same_size(tmp_path, monkeypatch):
    folder = tmp_path / "c"
    _fake_cache(folder)
    assert _valid_ignoring_safetensors(folder, monkeypatch)
    (folder / "chat_template.jinja").write_text("{% if %}}}}}}x")  # same length, not Jinja
    assert _valid_ignoring_safetensors(folder, monkeypatch) is False


def test_cache_rehashes_weights_whose_mtime_changed(tmp_path, monkeypatch):
    from steerchat.engine.runtime import loading

    monkeypatch.setattr(loading, "FULL_HASH_BELOW", 1024)  # the 4 KB weights count as big
    folder = tmp_path / "c"
    _fake_cache(folder)
    weights = folder / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\xff" * 4096)  # NaN bytes, same size
    assert _valid_ignoring_safetensors(folder, monkeypatch) is False
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: the finiteness check's job
    assert _valid_ignoring_safetensors(folder, monkeypatch) is True
    assert _valid_ignoring_safetensors(folder, monkeypatch, full_check=True) is False


def test_stale_partial_folders_are_removed(tmp_path):
    from steerchat.engine.runtime import loading

    old = tmp_path / "x-123.partial"
    new = tmp_path / "y-456.partial"
    old.mkdir()
    new.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    loading._clean_partials(tmp_path)
    assert not old.exists() and new.exists()  # one being written right now is left alone


def test_not_a_gguf_named_gguf(tmp_path):
    from steerchat.engine.core.api import ModelNotAvailable
    from steerchat.engine.runtime import loading

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelNotAvailable, match="not a GGUF model file"):
        loading.convert_gguf(fake)
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("where", ["cache", "model-folder"])
def test_a_file_in_the_cache_s_place_and_a_failed_conversion(home, where):
    """The cache folder (or a converted model's folder) replaced by a file is moved aside, never
    deleted; a GGUF that fails to convert is one sentence and leaves no *.partial folder."""
    from steerchat.engine.core.api import ModelNotAvailable
    from steerchat.engine.core.paths import get_paths
    from steerchat.engine.runtime import loading

    gguf = home / "damaged.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 12)  # the signature, then nothing a reader can use
    cache = get_paths().models_cache
    in_the_way = cache if where == "cache" else loading._gguf_cache_dir(gguf)
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("I am a file")
    with pytest.raises(ModelNotAvailable) as err:
        loading.convert_gguf(gguf)
    assert "\n" not in str(err.value) and str(err.value).startswith("Could not convert damaged.gguf")
    aside = list(in_the_way.parent.glob(in_the_way.name + ".not-a-folder-*"))
    assert [p.read_text() for p in aside] == ["I am a file"]
    assert cache.is_dir() and not list(cache.glob("*.partial"))


@pytest.mark.parametrize("spec", ["/etc/passwd", "/etc/hostname"])
def test_model_path_that_is_a_plain_file(spec):
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.runtime import loading

    if not Path(spec).is_file():
        pytest.skip(f"no {spec} here")
    with pytest.raises(EngineError) as err:
        loading.resolve(spec)
    assert "\n" not in str(err.value) and "not a GGUF model" in str(err.value)
    with pytest.raises(EngineError):
        loading._download_with_progress(spec, None)


def test_download_of_a_missing_gguf_and_a_bad_id(tmp_path, monkeypatch):
    from steerchat.engine.core.api import ModelNotAvailable
    from steerchat.engine.runtime import loading

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailable, match="No GGUF file"):
        loading._download_with_progress("x.gguf", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable, match="not a valid Hugging Face model id"):
        loading._download_with_progress("bad//id with spaces", None)


def test_config_json_with_a_wrong_type(tmp_path):
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.runtime import loading

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "big"}))
    with pytest.raises(EngineError) as err:
        loading.load_model(str(folder), device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cache_damage_is_rebuilt_from_the_starter_gguf(home):
    """Real conversion of the starter GGUF: a file where the cache folder belongs, then NaN
    weights with the mtime kept and a garbage template: each load still gives a working model."""
    import torch
    from steerchat.engine.runtime import loading
    from steerchat.models import STARTER, get_entry

    gguf = loading.gguf_from_wheel(get_entry(STARTER).source)
    target = loading._gguf_cache_dir(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("I am a file")
    stale = target.parent / "old.partial"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    loaded = loading.load_model(STARTER, device="cpu")
    assert target.is_dir() and not stale.exists() and list(target.parent.glob("*.not-a-folder-*"))
    del loaded
    weights = target / "model.safetensors"
    st = weights.stat()
    with open(weights, "r+b") as fh:  # NaN over the tensor data, same size, mtime restored
        fh.seek(st.st_size // 2)
        fh.write(b"\xff" * 4096)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    loaded = loading.load_model(STARTER, device="cpu")
    assert all(bool(torch.isfinite(p).all()) for p in loaded.model.parameters())
    template = target / "chat_template.jinja"
    template.write_text("{% garbage " + "x" * (template.stat().st_size - 11))
    loaded = loading.load_model(STARTER, device="cpu")
    assert "{% garbage" not in template.read_text()
    assert not list(target.parent.glob("*.partial"))
