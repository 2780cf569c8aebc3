"""The history store under faults: damaged files moved aside, read-only and locked databases,
invalid UTF-8 rows, and the retry queue that keeps the UI thread from blocking."""

from __future__ import annotations

import sqlite3
import time

import pytest

from steerchat.store import Store, history, open_store


def _saved(path):
    store = Store(path)
    chat = store.new_chat("kept", "m")
    store.add_message(chat, "user", "hello")
    store.close()
    return chat


def _aside(path):
    return sorted(p.name for p in path.parent.iterdir() if ".damaged-" in p.name)


def test_random_bytes_are_moved_aside_and_a_fresh_store_opens(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"\x13\x37garbage" * 500)
    (tmp_path / "history.sqlite-wal").write_bytes(b"wal bytes")
    store, warning = open_store(path)
    assert warning and "damaged" in warning and "moved" in warning
    names = _aside(path)
    assert any(n.endswith("-wal") for n in names) and len(names) == 2
    moved = next(tmp_path / n for n in names if not n.endswith("-wal"))
    assert moved.read_bytes() == b"\x13\x37garbage" * 500  # never deleted, never changed
    chat = store.new_chat("new", "m")
    store.add_message(chat, "user", "works")
    assert [m.content for m in store.messages(chat)] == ["works"]
    assert not store.in_memory


def test_truncated_file_is_moved_aside(tmp_path):
    path = tmp_path / "history.sqlite"
    store = Store(path)
    chat = store.new_chat("t", "m")
    for i in range(300):
        store.add_message(chat, "user", "x" * 500)
    store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    store, warning = open_store(path)
    assert warning and "damaged" in warning
    assert _aside(path)
    assert store.chats() == []
    store.new_chat("fresh", "m")


def test_good_file_opens_without_warning(tmp_path):
    path = tmp_path / "history.sqlite"
    _saved(path)
    store, warning = open_store(path)
    assert warning is None and [c.title for c in store.chats()] == ["kept"]


def test_unwritable_folder_gives_an_in_memory_copy(tmp_path, monkeypatch):
    path = tmp_path / "history.sqlite"
    _saved(path)
    # Tests may run as root, for whom mode bits do not stop writes: fake the probe.
    monkeypatch.setattr(history, "_can_write", lambda folder: False)
    store, warning = open_store(path)
    assert "cannot be written" in warning and "memory" in warning
    assert store.in_memory and [c.title for c in store.chats()] == ["kept"]
    chat = store.new_chat("new", "m")
    store.add_message(chat, "user", "typed")
    assert store.messages(chat)[0].content == "typed"


def test_immutable_file_gives_an_in_memory_copy(tmp_path, monkeypatch):
    path = tmp_path / "history.sqlite"
    _saved(path)
    real_access = history.os.access
    monkeypatch.setattr(history.os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode))
    store, warning = open_store(path)
    assert "memory" in warning and store.in_memory
    assert [c.title for c in store.chats()] == ["kept"]


def test_folder_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the folder should be")
    store, warning = open_store(blocker / "history.sqlite")
    assert "memory" in warning and store.in_memory
    store.new_chat("x", "m")
    assert blocker.read_text() == "a file where the folder should be"


def test_newer_schema_is_left_alone(tmp_path):
    path = tmp_path / "history.sqlite"
    _saved(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    store, warning = open_store(path)
    assert "schema version" in warning and store.in_memory
    assert not _aside(path)


def _lock(path):
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    return other


def test_lock_held_at_start_opens_at_once_and_saves_later(tmp_path):
    path = tmp_path / "history.sqlite"
    _saved(path)
    other = _lock(path)
    t0 = time.monotonic()
    store, warning = open_store(path)
    chat = store.new_chat("while locked", "m")
    msg = store.add_message(chat, "user", "typed while locked")
    assert time.monotonic() - t0 < 2.0
    assert warning is None and chat < 0 and msg < 0 and store.pending >= 2
    other.execute("ROLLBACK")
    other.close()
    deadline = time.monotonic() + 5
    while store.pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.pending == 0
    real = store._ids[chat]
    assert [m.content for m in store.messages(real)] == ["typed while locked"]
    assert [m.content for m in store.messages(chat)] == ["typed while locked"]  # provisional id still works
    store.close()


def test_lock_taken_while_chatting_never_blocks_a_write(tmp_path):
    path = tmp_path / "history.sqlite"
    store = Store(path)
    chat = store.new_chat("c", "m")
    reply = store.add_message(chat, "assistant", "", status="streaming")
    other = _lock(path)
    t0 = time.monotonic()
    for i in range(20):
        store.update_message(reply, content=f"partial {i}")
    user = store.add_message(chat, "user", "next message")
    store.update_message(user, content="next message, edited")
    assert time.monotonic() - t0 < 1.0  # 20+ writes, none waited for the lock
    assert store.pending > 0
    other.execute("ROLLBACK")
    other.close()
    store.close()
    again = Store(path)
    rows = again.messages(chat)
    assert [r.content for r in rows] == ["partial 19", "next message, edited"]


def test_writes_still_busy_at_close_go_to_an_unsaved_file(tmp_path):
    path = tmp_path / "history.sqlite"
    store = Store(path)
    chat = store.new_chat("c", "m")
    other = _lock(path)
    store.add_message(chat, "user", "do not lose me")
    store.close(wait_s=0.3)
    assert store.unsaved_file is not None and "do not lose me" in store.unsaved_file.read_text()
    other.execute("ROLLBACK")
    other.close()


def test_invalid_utf8_rows_read_with_replacement_characters(tmp_path):
    path = tmp_path / "history.sqlite"
    chat = _saved(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE messages SET content = CAST(X'6869FF9B21' AS TEXT)")
    db.execute("UPDATE chats SET title = CAST(X'C328' AS TEXT)")
    db.commit()
    db.close()
    store = Store(path)
    assert store.messages(chat)[0].content == "hi\ufffd\ufffd!"
    assert "\ufffd" in store.chats()[0].title


def test_streaming_recovery_still_happens(tmp_path):
    path = tmp_path / "history.sqlite"
    store = Store(path)
    chat = store.new_chat("c", "m")
    store.add_message(chat, "assistant", "half", status="streaming")
    store.close()
    store, warning = open_store(path)
    assert warning is None and store.recovered == 1
    assert store.messages(chat)[0].status == "interrupted"


@pytest.mark.parametrize("name", ["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_NOTADB", "SQLITE_CORRUPT"])
def test_error_codes_are_classified(name):
    exc = sqlite3.OperationalError("x")
    exc.sqlite_errorname = name
    assert history._code(exc) == name
