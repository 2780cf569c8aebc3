"""Branches: messages form a tree per chat (parent_id), the chat remembers the branch on
screen (current leaf), version-1 databases upgrade into one linear branch with every row."""

from __future__ import annotations

import sqlite3

from steerchat.store import Store, upgrades
from tests.store.test_upgrades import V1_SCHEMA


def _v1_file(path, chats=2, turns=3):
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("PRAGMA user_version = 1")
    for c in range(chats):
        db.execute("INSERT INTO chats (title, created, updated, model) VALUES (?, 0, 0, 'm')", (f"chat {c}",))
        for t in range(turns):
            db.execute("INSERT INTO messages (chat_id, role, content, created) VALUES (?, 'user', ?, 0)",
                       (c + 1, f"q{c}.{t}"))
            db.execute("INSERT INTO messages (chat_id, role, content, created, flagged_bad) "
                       "VALUES (?, 'assistant', ?, 0, ?)", (c + 1, f"a{c}.{t}", int(t == 1)))
    db.commit()
    db.close()


def test_v1_database_becomes_one_linear_branch_per_chat(tmp_path):
    path = tmp_path / "h.db"
    _v1_file(path)
    store = Store(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == upgrades.latest_version()
    for chat in store.chats():
        rows = store.messages(chat.id)
        assert len(rows) == 6 and chat.messages == 6
        assert rows[0].parent_id is None
        assert [r.parent_id for r in rows[1:]] == [r.id for r in rows[:-1]]
        assert store.current_leaf(chat.id) == rows[-1].id
        assert [m.content for m in store.branch(chat.id)] == [r.content for r in rows]
    # the flagged reply still finds the prompt it answered
    assert [(f.user_text, f.reply) for f in store.flagged_mistakes()] == [("q0.1", "a0.1"), ("q1.1", "a1.1")]
    store.close()


def test_edit_forks_and_both_branches_are_kept(tmp_path):
    store = Store(tmp_path / "h.db")
    chat = store.new_chat("t", "m")
    u1 = store.add_message(chat, "user", "first")
    a1 = store.add_message(chat, "assistant", "one")
    u2 = store.add_message(chat, "user", "second")
    a2 = store.add_message(chat, "assistant", "two")
    # edit the second prompt: a sibling of u2 under a1
    u2b = store.add_message(chat, "user", "second, edited", parent=a1)
    a2b = store.add_message(chat, "assistant", "two again")
    assert [m.id for m in store.branch(chat)] == [u1, a1, u2b, a2b]
    assert [m.id for m in store.siblings(u2)] == [u2, u2b]
    assert [m.id for m in store.branch(chat, a2)] == [u1, a1, u2, a2]
    store.set_leaf(chat, store.leaf_under(u2))
    assert store.current_leaf(chat) == a2
    # regenerate: an alternative reply under the same prompt, each with its own trace
    a2c = store.add_message(chat, "assistant", "two, third try", parent=u2, trace_json='{"x": 1}', level="High")
    assert [m.id for m in store.siblings(a2)] == [a2, a2c]
    assert store.branch(chat)[-1].content == "two, third try"
    store.close()
    reopened = Store(tmp_path / "h.db")
    assert [m.id for m in reopened.branch(chat)] == [u1, a1, u2, a2c]
    assert len(reopened.messages(chat)) == 7
    reopened.close()


def test_delete_takes_what_follows_and_moves_to_another_branch(tmp_path):
    store = Store(tmp_path / "h.db")
    chat = store.new_chat("t", "m")
    u1 = store.add_message(chat, "user", "first")
    a1 = store.add_message(chat, "assistant", "one")
    u2 = store.add_message(chat, "user", "second")
    store.add_message(chat, "assistant", "two")
    u2b = store.add_message(chat, "user", "other", parent=a1)
    a2b = store.add_message(chat, "assistant", "other two")
    store.delete_message(u2b)
    assert u2b not in {m.id for m in store.messages(chat)} and a2b not in {m.id for m in store.messages(chat)}
    assert [m.content for m in store.branch(chat)] == ["first", "one", "second", "two"]
    store.delete_message(u2)
    assert [m.id for m in store.branch(chat)] == [u1, a1]
    assert store.current_leaf(chat) == a1
    store.close()
