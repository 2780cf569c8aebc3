"""Full-text search over saved chats (FTS5), kept in sync with the messages by triggers."""

from __future__ import annotations

import sqlite3

from steerchat.store import Store
from tests.store.test_branches import _v1_file


def test_search_finds_messages_and_follows_edits_and_deletes(tmp_path):
    store = Store(tmp_path / "h.db")
    a = store.new_chat("Cakes", "m")
    store.add_message(a, "user", "how do I bake a chocolate cake?")
    reply = store.add_message(a, "assistant", "")
    b = store.new_chat("Trains", "m")
    store.add_message(b, "user", "when is the next train to Lyon")
    assert store.search("chocolate") and store.search("chocolate")[0].chat_id == a
    assert store.search("choc")[0].snippet.count("«") == 1  # prefix match, marked
    assert store.search("lyon")[0].chat_title == "Trains"
    assert store.search("vanilla") == []
    store.update_message(reply, content="Use vanilla and butter.")
    hit = store.search("vanilla")[0]
    assert (hit.chat_id, hit.message_id, hit.role) == (a, reply, "assistant")
    store.delete_chat(b)
    assert store.search("lyon") == []
    assert store.search('"') == [] and store.search("") == [] and store.search("AND OR (") == []
    store.close()


def test_search_covers_chats_written_before_the_index(tmp_path):
    path = tmp_path / "h.db"
    _v1_file(path)
    store = Store(path)
    assert {h.message_id for h in store.search("q1.2")} or store.search("q1")
    assert len(store.search("a0")) == 3
    assert sqlite3.connect(path).execute("SELECT count(*) FROM messages_fts").fetchone()[0] == 12
    store.close()
