"""The history store: WAL, commit per write, crash recovery, and the chat and message calls."""

import sqlite3

from steerchat.store import Store


def test_wal_and_round_trip(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    chat = store.new_chat("first", "phi-3-mini", "auto", None)
    store.add_message(chat, "user", "hi", level="Off")
    reply = store.add_message(chat, "assistant", "", level="Off", status="streaming")
    store.update_message(reply, content="hello", status="ok", trace_json="{}")
    rows = store.messages(chat)
    assert [(r.role, r.content, r.status) for r in rows] == [("user", "hi", "ok"), ("assistant", "hello", "ok")]
    assert store.chats()[0].messages == 2


def test_each_write_is_committed_at_once(tmp_path):
    """Another connection sees a partial reply without the store closing: a kill loses nothing saved."""
    path = tmp_path / "h.sqlite"
    store = Store(path)
    chat = store.new_chat("c", "m")
    reply = store.add_message(chat, "assistant", "", status="streaming")
    store.update_message(reply, content="partial")
    other = sqlite3.connect(path)
    assert other.execute("SELECT content, status FROM messages").fetchall() == [("partial", "streaming")]


def test_leftover_streaming_rows_become_interrupted(tmp_path):
    path = tmp_path / "h.sqlite"
    store = Store(path)
    chat = store.new_chat("c", "m")
    reply = store.add_message(chat, "assistant", "half a rep", status="streaming")
    # no finalise, no close: as if the process was killed
    reopened = Store(path)
    assert reopened.recovered == 1
    row = reopened.messages(chat)[0]
    assert row.id == reply and row.status == "interrupted" and row.content == "half a rep"


def test_rename_delete_flag(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    a = store.new_chat("a", "m")
    b = store.new_chat("b", "m")
    msg = store.add_message(b, "assistant", "bad reply")
    store.set_flag(msg, True)
    assert [m.content for m in store.flagged()] == ["bad reply"]
    store.rename_chat(a, "renamed")
    assert store.chat(a).title == "renamed"
    store.delete_chat(b)
    assert [c.id for c in store.chats()] == [a]
    assert store.messages(b) == []  # messages go with their chat
