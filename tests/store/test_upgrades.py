"""Schema versions: old and fresh databases come up to date, newer ones are refused untouched,
and the read-only path align uses (open_existing, flagged_mistakes)."""

from __future__ import annotations

import sqlite3

import pytest

from steerchat.store import FlaggedReply, Store, StoreError, upgrades

# The schema as history.py created it before versions existed (user_version left at 0).
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    model TEXT NOT NULL,
    sae TEXT,
    system TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    level TEXT,
    trace_json TEXT,
    status TEXT NOT NULL DEFAULT 'ok'
        CHECK (status IN ('ok', 'stopped', 'interrupted', 'error', 'streaming')),
    created REAL NOT NULL,
    flagged_bad INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_chat ON messages(chat_id, id);
"""


def _user_version(path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def _columns(store: Store, table: str) -> list[str]:
    return [r[1] for r in store._db.execute(f"PRAGMA table_info({table})")]


def _old_database(path) -> None:
    """A history written by the code before schema versions: two chats, one flagged reply."""
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO chats (id, title, created, updated, model, sae, system) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(1, "locks", 1.0, 2.0, "phi-3-mini", "auto", None), (2, "poems", 3.0, 4.0, "gemma", None, "be brief")])
    db.executemany("INSERT INTO messages (chat_id, role, content, level, trace_json, status, created, flagged_bad) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [(1, "user", "How do I pick a lock?", "Off", None, "ok", 1.1, 0),
                    (1, "assistant", "Rake the pins.", "Off", '{"k": 1}', "ok", 1.2, 1),
                    (2, "user", "A poem?", None, None, "ok", 3.1, 0),
                    (2, "assistant", "Roses are", None, None, "streaming", 3.2, 0)])
    db.commit()
    db.close()


def test_migration_versions_count_up_from_one():
    assert [m.version for m in upgrades.MIGRATIONS] == list(range(1, len(upgrades.MIGRATIONS) + 1))
    assert upgrades.latest_version() == upgrades.MIGRATIONS[-1].version


def test_fresh_database_gets_the_latest_version(tmp_path):
    path = tmp_path / "h.sqlite"
    store = Store(path)
    assert _columns(store, "messages") == ["id", "chat_id", "role", "content", "level", "trace_json",
                                           "status", "created", "flagged_bad", "parent_id"]
    store.close()
    assert _user_version(path) == upgrades.latest_version()


def test_unversioned_database_keeps_every_row(tmp_path):
    path = tmp_path / "h.sqlite"
    _old_database(path)
    assert _user_version(path) == 0
    store = Store(path)
    assert [(c.id, c.title, c.model, c.sae, c.system, c.messages) for c in store.chats()] == [
        (2, "poems", "gemma", None, "be brief", 2), (1, "locks", "phi-3-mini", "auto", None, 2)]
    assert [(m.role, m.content, m.level, m.trace_json, m.status, m.flagged_bad) for m in store.messages(1)] == [
        ("user", "How do I pick a lock?", "Off", None, "ok", False),
        ("assistant", "Rake the pins.", "Off", '{"k": 1}', "ok", True)]
    # recovery still runs on an upgraded file
    assert store.recovered == 1
    assert [m.status for m in store.messages(2)] == ["ok", "interrupted"]
    store.close()
    assert _user_version(path) == upgrades.latest_version()


def test_each_migration_runs_once(tmp_path, monkeypatch):
    """A later migration (here a made-up version 2) runs on the first open only; rows survive it."""
    added = upgrades.Migration(upgrades.latest_version() + 1, "a test column",
                               ("ALTER TABLE chats ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0",))
    path = tmp_path / "h.sqlite"
    _old_database(path)
    monkeypatch.setattr(upgrades, "MIGRATIONS", (*upgrades.MIGRATIONS, added))
    Store(path).close()
    assert _user_version(path) == added.version
    store = Store(path)  # a second ALTER TABLE ADD COLUMN would raise "duplicate column"
    assert _columns(store, "chats")[-1] == "pinned"
    assert [c.title for c in store.chats()] == ["poems", "locks"]
    store.close()
    assert _user_version(path) == added.version


def test_failed_migration_leaves_the_previous_version(tmp_path, monkeypatch):
    broken = upgrades.Migration(upgrades.latest_version() + 1, "fails half way",
                                ("ALTER TABLE chats ADD COLUMN pinned INTEGER", "NOT SQL AT ALL"))
    path = tmp_path / "h.sqlite"
    Store(path).close()
    monkeypatch.setattr(upgrades, "MIGRATIONS", (*upgrades.MIGRATIONS, broken))
    with pytest.raises(sqlite3.OperationalError):
        Store(path)
    assert _user_version(path) == broken.version - 1
    db = sqlite3.connect(path)
    assert "pinned" not in [r[1] for r in db.execute("PRAGMA table_info(chats)")]  # rolled back together
    db.close()


def test_newer_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "h.sqlite"
    store = Store(path)
    store.add_message(store.new_chat("c", "m"), "assistant", "half", status="streaming")
    store.close()
    newer = upgrades.latest_version() + 1
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {newer}")
    db.close()
    before = path.read_bytes()
    for opener in (Store, Store.open_existing):
        with pytest.raises(StoreError) as err:
            opener(path)
        assert str(err.value) == (f"{path} is at history schema version {newer} but this steerchat knows only "
                                  f"up to version {upgrades.latest_version()}; upgrade steerchat to open it.")
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    assert db.execute("SELECT status FROM messages").fetchall() == [("streaming",)]  # not recovered either
    db.close()


def test_flagged_mistakes_pair_each_bad_reply_with_its_question(tmp_path):
    store = Store(tmp_path / "h.sqlite")
    a = store.new_chat("a", "m")
    b = store.new_chat("b", "m")
    orphan = store.add_message(b, "assistant", "Nobody asked.")
    store.add_message(a, "user", "First question")
    first = store.add_message(a, "assistant", "First answer")
    store.add_message(b, "user", "Question in b")
    in_b = store.add_message(b, "assistant", "Answer in b")
    store.add_message(a, "user", "Second question")
    store.add_message(a, "assistant", "Second answer")  # not flagged
    user_flag = store.add_message(a, "user", "A flagged user message")
    for mid in (orphan, first, in_b, user_flag):
        store.set_flag(mid, True)
    store.close()

    reader = Store.open_existing(tmp_path / "h.sqlite")
    assert reader.flagged_mistakes() == [
        FlaggedReply(b, orphan, "", "Nobody asked."),
        FlaggedReply(a, first, "First question", "First answer"),
        FlaggedReply(b, in_b, "Question in b", "Answer in b"),
    ]
    reader.close()


def test_open_existing_does_not_write(tmp_path):
    path = tmp_path / "h.sqlite"
    store = Store(path)
    store.add_message(store.new_chat("c", "m"), "assistant", "in flight", status="streaming")
    reader = Store.open_existing(path)
    assert reader.recovered == 0
    assert [m.status for m in reader.messages(1)] == ["streaming"]  # the UI's reply is left alone
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.set_flag(1, True)
    reader.close()
    store.close()


def test_open_existing_refuses_missing_foreign_and_garbage_files(tmp_path):
    missing = tmp_path / "nothere.sqlite"
    with pytest.raises(StoreError, match=f"^no history database at {missing}$"):
        Store.open_existing(missing)
    assert not missing.exists()

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database, just text\n" * 200)
    with pytest.raises(StoreError, match=f"^{garbage} is not a steerchat history database, or it is damaged"):
        Store.open_existing(garbage)

    foreign = tmp_path / "foreign.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.close()
    with pytest.raises(StoreError, match=f"^{foreign} is not a steerchat history database \\(it has no messages"):
        Store.open_existing(foreign)


def test_open_existing_asks_for_an_upgrade_of_an_older_file(tmp_path, monkeypatch):
    path = tmp_path / "h.sqlite"
    Store(path).close()
    added = upgrades.Migration(upgrades.latest_version() + 1, "a test column",
                               ("ALTER TABLE chats ADD COLUMN pinned INTEGER",))
    monkeypatch.setattr(upgrades, "MIGRATIONS", (*upgrades.MIGRATIONS, added))
    with pytest.raises(StoreError, match="older than version .* open it in steerchat once to upgrade it"):
        Store.open_existing(path)
    assert _user_version(path) == added.version - 1
