"""Chat history in SQLite: every chat, every message and its trace, saved as it happens.

WAL mode and a commit per write, so a crash or kill loses at most the reply in flight.
A reply is inserted as 'streaming' when the turn starts and its partial text is saved
every half second; on the next open any row still 'streaming' becomes 'interrupted'.
The schema and its versions live in upgrades.py; opening a database brings it up to date.
The align pipeline reads it through `Store.open_existing`, which never writes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from steerchat.store import upgrades
from steerchat.store.errors import StoreError

STATUSES = ("ok", "stopped", "interrupted", "error", "streaming")


@dataclass
class ChatRow:
    id: int
    title: str
    created: float
    updated: float
    model: str
    sae: str | None
    system: str | None
    messages: int = 0


@dataclass
class MessageRow:
    id: int
    chat_id: int
    role: str
    content: str
    level: str | None
    trace_json: str | None
    status: str
    created: float
    flagged_bad: bool


@dataclass
class FlaggedReply:
    """A reply flagged as bad and the user message it answered ('' when the chat has none before it)."""

    chat_id: int
    message_id: int
    user_text: str
    reply: str


class Store:
    """The history database. One connection, guarded by a lock so a worker may write too."""

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._attach(path, sqlite3.connect(str(path), check_same_thread=False, isolation_level=None))
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
        try:
            upgrades.upgrade(self._db, path)
        except StoreError:
            self._db.close()
            raise
        self.recovered = self._recover_interrupted()

    @classmethod
    def open_existing(cls, path: Path | str) -> Store:
        """Open an existing history database read-only: nothing is created, migrated or recovered.

        For readers such as the align pipeline, so a chat running in the UI is not disturbed
        (its reply in flight stays 'streaming'). Raises StoreError when there is no file at
        `path`, when it is not a steerchat history database, or when it is at another schema
        version (the UI upgrades it on its next open). Writing through the result fails.
        """
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no history database at {path}")
        store = cls.__new__(cls)
        try:
            db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True,
                                 check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the history database ({exc}).") from None
        store._attach(path, db)
        try:
            upgrades.check_readable(db, path)
        except StoreError:
            db.close()
            raise
        store.recovered = 0
        return store

    def _attach(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = db
        self._db.row_factory = sqlite3.Row

    def _write(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        # isolation_level=None: every statement is its own committed transaction.
        with self._lock:
            return self._db.execute(sql, args)

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _recover_interrupted(self) -> int:
        """Mark replies left 'streaming' by a crash as 'interrupted'; return how many."""
        return self._write("UPDATE messages SET status='interrupted' WHERE status='streaming'").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # chats
    def new_chat(self, title: str, model: str, sae: str | None = None, system: str | None = None) -> int:
        now = time.time()
        cur = self._write(
            "INSERT INTO chats (title, created, updated, model, sae, system) VALUES (?, ?, ?, ?, ?, ?)",
            (title, now, now, model, sae, system),
        )
        return int(cur.lastrowid)

    def chats(self) -> list[ChatRow]:
        """All chats, most recently updated first, with their message counts."""
        rows = self._read(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) AS n "
            "FROM chats c ORDER BY c.updated DESC, c.id DESC"
        )
        return [
            ChatRow(r["id"], r["title"], r["created"], r["updated"], r["model"], r["sae"], r["system"], r["n"])
            for r in rows
        ]

    def chat(self, chat_id: int) -> ChatRow | None:
        return next((c for c in self.chats() if c.id == chat_id), None)

    def rename_chat(self, chat_id: int, title: str) -> None:
        self._write("UPDATE chats SET title=?, updated=? WHERE id=?", (title, time.time(), chat_id))

    def delete_chat(self, chat_id: int) -> None:
        self._write("DELETE FROM chats WHERE id=?", (chat_id,))

    # messages
    def add_message(
        self,
        chat_id: int,
        role: str,
        content: str,
        *,
        level: str | None = None,
        status: str = "ok",
        trace_json: str | None = None,
    ) -> int:
        now = time.time()
        cur = self._write(
            "INSERT INTO messages (chat_id, role, content, level, trace_json, status, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (chat_id, role, content, level, trace_json, status, now),
        )
        self._write("UPDATE chats SET updated=? WHERE id=?", (now, chat_id))
        return int(cur.lastrowid)

    def update_message(
        self,
        message_id: int,
        *,
        content: str | None = None,
        status: str | None = None,
        level: str | None = None,
        trace_json: str | None = None,
    ) -> None:
        """Set the given columns of one message (None leaves a column as it is)."""
        sets, args = [], []
        for column, value in (("content", content), ("status", status), ("level", level), ("trace_json", trace_json)):
            if value is not None:
                sets.append(f"{column}=?")
                args.append(value)
        if sets:
            self._write(f"UPDATE messages SET {', '.join(sets)} WHERE id=?", (*args, message_id))

    def delete_message(self, message_id: int) -> None:
        self._write("DELETE FROM messages WHERE id=?", (message_id,))

    def set_flag(self, message_id: int, bad: bool) -> None:
        """Flag a reply as bad (kept for the learn-from-mistakes pipeline)."""
        self._write("UPDATE messages SET flagged_bad=? WHERE id=?", (int(bad), message_id))

    def messages(self, chat_id: int) -> list[MessageRow]:
        rows = self._read("SELECT * FROM messages WHERE chat_id=? ORDER BY id", (chat_id,))
        return [
            MessageRow(
                r["id"], r["chat_id"], r["role"], r["content"], r["level"], r["trace_json"],
                r["status"], r["created"], bool(r["flagged_bad"]),
            )
            for r in rows
        ]

    def flagged(self) -> list[MessageRow]:
        """Every reply a user flagged as bad, oldest first."""
        rows = self._read("SELECT id, chat_id FROM messages WHERE flagged_bad=1 ORDER BY id")
        out = []
        for r in rows:
            out.extend(m for m in self.messages(r["chat_id"]) if m.id == r["id"])
        return out

    def flagged_mistakes(self) -> list[FlaggedReply]:
        """Every assistant reply flagged as bad, oldest first, with the user message it answered.

        That is the last user message before the reply in the same chat. Raises StoreError
        naming the file when the database cannot be read (a damaged file opens but fails here).
        """
        try:
            rows = self._read(
                "SELECT m.id, m.chat_id, m.content, "
                "(SELECT u.content FROM messages u WHERE u.chat_id = m.chat_id AND u.id < m.id "
                "AND u.role = 'user' ORDER BY u.id DESC LIMIT 1) AS user_text "
                "FROM messages m WHERE m.flagged_bad = 1 AND m.role = 'assistant' ORDER BY m.id"
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot read the history database ({exc}).") from None
        return [FlaggedReply(r["chat_id"], r["id"], r["user_text"] or "", r["content"]) for r in rows]
