"""The history schema as an ordered list of versioned migrations.

The version a database is at lives in `PRAGMA user_version`. Opening a database applies
every migration above that version, each in its own transaction together with the new
version number, so a crash mid-upgrade leaves the file at the last version it completed.
A change to the schema is a new Migration at the end of MIGRATIONS; shipped ones never change.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from steerchat.store.errors import StoreError


@dataclass(frozen=True)
class Migration:
    """The statements that take a database from version - 1 to version."""

    version: int
    note: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "chats and their messages, with trace, status and the bad-reply flag", (
        """CREATE TABLE IF NOT EXISTS chats (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            model TEXT NOT NULL,
            sae TEXT,
            system TEXT
        )""",
        """CREATE TABLE IF NOT EXISTS messages (
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
        )""",
        "CREATE INDEX IF NOT EXISTS messages_chat ON messages(chat_id, id)",
    )),
    Migration(2, "branches: each message's parent (a tree per chat) and the chat's current leaf", (
        "ALTER TABLE messages ADD COLUMN parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE",
        "ALTER TABLE chats ADD COLUMN current_leaf INTEGER",
        # A version-1 chat becomes one linear branch: each message follows the one before it.
        """UPDATE messages SET parent_id = (SELECT MAX(p.id) FROM messages p
            WHERE p.chat_id = messages.chat_id AND p.id < messages.id)""",
        "UPDATE chats SET current_leaf = (SELECT MAX(m.id) FROM messages m WHERE m.chat_id = chats.id)",
        "CREATE INDEX IF NOT EXISTS messages_parent ON messages(parent_id)",
    )),
    Migration(3, "full-text search over message text (FTS5), kept in sync by triggers", (
        "CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(content, content='messages', content_rowid='id')",
        """CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END""",
        """CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        END""",
        """CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE OF content ON messages BEGIN
            INSERT INTO messages_fts(messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
            INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content);
        END""",
        "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
    )),
)


def latest_version() -> int:
    """The schema version this code writes and reads."""
    return MIGRATIONS[-1].version


def _has_messages_table(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='messages'").fetchone() is not None


def _stored_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def schema_version(db: sqlite3.Connection) -> int:
    """The version `db` is at; 0 for an empty database."""
    version = _stored_version(db)
    if version == 0 and _has_messages_table(db):
        return 1  # written before the schema was versioned: the version-1 tables, unmarked
    return version


def _refuse_newer(path: Path, version: int) -> None:
    if version > latest_version():
        raise StoreError(f"{path} is at history schema version {version} but this steerchat knows only "
                         f"up to version {latest_version()}; upgrade steerchat to open it.")


def upgrade(db: sqlite3.Connection, path: Path) -> int:
    """Apply every migration above the database's version; return the version it ends at.

    `db` must be in autocommit mode (isolation_level=None): each migration opens its own
    transaction. A database newer than this code raises StoreError before anything is written.
    """
    version = schema_version(db)
    _refuse_newer(path, version)
    if version != _stored_version(db):
        db.execute(f"PRAGMA user_version = {version}")  # mark an unversioned version-1 file as such
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        # IMMEDIATE takes the write lock before the version is read again, so two processes
        # opening the same old file cannot both run a migration.
        db.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(db) < migration.version:
                for statement in migration.statements:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {migration.version}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors already rolled it back
                db.execute("ROLLBACK")
            raise
        version = migration.version
    return version


def check_readable(db: sqlite3.Connection, path: Path) -> int:
    """Check, without writing, that `db` is a steerchat history at the current version; return it.

    Raises StoreError naming `path` when it is not a steerchat history database (or not a
    database at all), or when it is at another version than this code reads.
    """
    try:
        if not _has_messages_table(db):
            raise StoreError(f"{path} is not a steerchat history database (it has no messages table).")
        version = schema_version(db)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a steerchat history database, or it is damaged ({exc}).") from None
    _refuse_newer(path, version)
    if version < latest_version():
        raise StoreError(f"{path} is at history schema version {version}, older than version "
                         f"{latest_version()} that this steerchat reads; open it in steerchat once to upgrade it.")
    return version
