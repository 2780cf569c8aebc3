"""Chat history in SQLite: every chat, every message and its trace, saved as it happens.

WAL mode and a commit per write, so a crash or kill loses at most the reply in flight.
A reply is inserted as 'streaming' when the turn starts and its partial text is saved
every half second; on the next open any row still 'streaming' becomes 'interrupted'.
The schema and its versions live in upgrades.py; opening a database brings it up to date.
The align pipeline reads it through `Store.open_existing`, which never writes.

Faults never stop the chat (`open_store`): a damaged file is moved aside (never deleted)
next to its -wal/-shm and a fresh one is started; a folder or file that cannot be written
gives an in-memory copy of what could be read; a database another process holds locked is
written with a short busy timeout, and a write that finds it busy waits in a queue that a
background thread retries in order, so the UI thread never blocks for long and nothing is
lost (what is still queued at close is written to a `.unsaved-<timestamp>.jsonl` file).
Text that is not valid UTF-8 is read with replacement characters instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from steerchat.store import upgrades
from steerchat.store.errors import StoreError

STATUSES = ("ok", "stopped", "interrupted", "error", "streaming")
BUSY_TIMEOUT_S = 0.05  # how long one write may wait for another process's lock (UI thread)
RETRY_EVERY_S = 0.25  # how often queued writes are retried while the database is busy
_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_BUSY = {"SQLITE_BUSY", "SQLITE_LOCKED"}


def _code(exc: BaseException) -> str:
    """The SQLite error name of `exc` (base code, e.g. SQLITE_BUSY for SQLITE_BUSY_SNAPSHOT)."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    for base in _DAMAGED | _BUSY | {"SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM"}:
        if name == base or name.startswith(base + "_"):
            return base
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return "SQLITE_BUSY"
    if "not a database" in text or "malformed" in text:
        return "SQLITE_CORRUPT"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return "SQLITE_READONLY"
    return name


def _lenient_text(raw: bytes) -> str:
    # A row written by another tool with invalid UTF-8 opens with U+FFFD instead of failing.
    return raw.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Pending:
    """A row id not known yet: the insert that makes it is still in the retry queue."""

    n: int


@dataclass
class _Op:
    sql: str
    args: tuple
    makes: int | None = None  # the provisional (negative) id this insert gives its row
    tries: int = field(default=0)


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
    parent_id: int | None = None  # the message this one follows (None: the chat's first message)


@dataclass
class SearchHit:
    """A message whose text matches a search, with its chat and a short excerpt."""

    chat_id: int
    message_id: int
    chat_title: str
    role: str
    snippet: str


_LEAF = object()  # add_message's default parent: the chat's current leaf


@dataclass
class FlaggedReply:
    """A reply flagged as bad and the user message it answered ('' when the chat has none before it)."""

    chat_id: int
    message_id: int
    user_text: str
    reply: str


class Store:
    """The history database. One connection, guarded by a lock so a worker may write too."""

    def __init__(self, path: Path | str, *, check: bool = False) -> None:
        """Open (creating or upgrading) the database at `path`.

        `check` also runs SQLite's quick_check, so a damaged file fails here rather than on
        a later read. Raises sqlite3 errors as they come; `open_store` decides what to do.
        """
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._attach(path, sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False,
                                           isolation_level=None))
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes
            if check:
                result = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
            upgrades.upgrade(self._db, path)
        except BaseException:
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
        self._lock = threading.RLock()
        self._db = db
        self._db.row_factory = sqlite3.Row
        self._db.text_factory = _lenient_text
        self._queue: list[_Op] = []
        self._ids: dict[int, int] = {}  # provisional id -> the real row id once inserted
        self._next_provisional = -1
        self._retrier: threading.Thread | None = None
        self._closed = False
        self.in_memory = str(path) == ":memory:"
        self.unsaved_file: Path | None = None

    @property
    def pending(self) -> int:
        """How many writes wait in the retry queue (the database was busy)."""
        return len(self._queue)

    def _id(self, row_id: int) -> int | _Pending:
        """The real id for `row_id`, or a placeholder while its insert is still queued."""
        if row_id >= 0:
            return row_id
        return self._ids.get(row_id, _Pending(row_id))

    def _resolve(self, args: tuple) -> tuple:
        return tuple(self._ids[a.n] if isinstance(a, _Pending) else a for a in args)

    def _run(self, op: _Op) -> sqlite3.Cursor:
        cur = self._db.execute(op.sql, self._resolve(op.args))
        if op.makes is not None:
            self._ids[op.makes] = int(cur.lastrowid)
        return cur

    def _write(self, sql: str, args: tuple = (), makes_row: bool = False) -> tuple[int, int]:
        """Run one write; return (row id or provisional id, rowcount).

        isolation_level=None: every statement is its own committed transaction. When the
        database is busy (another process holds its lock) or earlier writes still wait,
        the write joins the retry queue and a provisional negative id stands for its row.
        """
        with self._lock:
            op = _Op(sql, args)
            if not self._queue and not any(isinstance(a, _Pending) for a in args):
                try:
                    cur = self._run(op)
                    return (int(cur.lastrowid or 0), cur.rowcount)
                except sqlite3.OperationalError as exc:
                    if _code(exc) not in _BUSY:
                        raise
            if makes_row:
                op.makes = self._next_provisional
                self._next_provisional -= 1
            self._queue.append(op)
            self._start_retrier()
            return (op.makes or 0, 0)

    def _start_retrier(self) -> None:
        if self._retrier is None or not self._retrier.is_alive():
            self._retrier = threading.Thread(target=self._retry_loop, name="steerchat-store-retry", daemon=True)
            self._retrier.start()

    def flush(self) -> bool:
        """Try the queued writes once, in order; return True when none is left."""
        with self._lock:
            while self._queue and not self._closed:
                try:
                    self._run(self._queue[0])
                except sqlite3.OperationalError as exc:
                    if _code(exc) in _BUSY:
                        self._queue[0].tries += 1
                        return False
                    self._queue.pop(0)  # a write that can never succeed must not block the rest
                    continue
                except sqlite3.Error:
                    self._queue.pop(0)
                    continue
                self._queue.pop(0)
            return not self._queue

    def _retry_loop(self) -> None:
        while not self._closed and self._queue:
            time.sleep(RETRY_EVERY_S)
            if self.flush():
                return

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        if any(isinstance(a, _Pending) for a in args):
            return []  # a row whose insert is still queued has nothing to read yet
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if _code(exc) not in _BUSY:
                    raise
            time.sleep(BUSY_TIMEOUT_S)
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.OperationalError as exc:
                if _code(exc) not in _BUSY:
                    raise
                return []  # still locked by another process: show nothing rather than freeze

    def _recover_interrupted(self) -> int:
        """Mark replies left 'streaming' by a crash as 'interrupted'; return how many."""
        return self._write("UPDATE messages SET status='interrupted' WHERE status='streaming'")[1]

    def close(self, wait_s: float = 2.0) -> None:
        """Close the database; queued writes get `wait_s` more seconds, then go to a JSONL file."""
        deadline = time.monotonic() + wait_s
        while self._queue and not self.flush() and time.monotonic() < deadline:
            time.sleep(RETRY_EVERY_S / 2)
        with self._lock:
            if self._queue:
                self.unsaved_file = _write_unsaved(self.path, self._queue, self._ids)
                self._queue.clear()
            self._closed = True
            self._db.close()

    # chats
    def new_chat(self, title: str, model: str, sae: str | None = None, system: str | None = None) -> int:
        now = time.time()
        return self._write(
            "INSERT INTO chats (title, created, updated, model, sae, system) VALUES (?, ?, ?, ?, ?, ?)",
            (title, now, now, model, sae, system), makes_row=True,
        )[0]

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
        real = self._id(chat_id)
        if isinstance(real, _Pending):
            return None
        return next((c for c in self.chats() if c.id == real), None)

    def rename_chat(self, chat_id: int, title: str) -> None:
        self._write("UPDATE chats SET title=?, updated=? WHERE id=?", (title, time.time(), self._id(chat_id)))

    def delete_chat(self, chat_id: int) -> None:
        self._write("DELETE FROM chats WHERE id=?", (self._id(chat_id),))

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
        parent: int | None | object = _LEAF,
    ) -> int:
        """Add a message after `parent` (default: the chat's current leaf; None: a new first message).

        The new message becomes the chat's current leaf, so the branch on screen ends with it.
        """
        now = time.time()
        chat = self._id(chat_id)
        if parent is _LEAF:
            row_id = self._write(
                "INSERT INTO messages (chat_id, role, content, level, trace_json, status, created, parent_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT current_leaf FROM chats WHERE id=?))",
                (chat, role, content, level, trace_json, status, now, chat), makes_row=True,
            )[0]
        else:
            row_id = self._write(
                "INSERT INTO messages (chat_id, role, content, level, trace_json, status, created, parent_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (chat, role, content, level, trace_json, status, now,
                 None if parent is None else self._id(parent)), makes_row=True,
            )[0]
        self._write("UPDATE chats SET updated=?, current_leaf=? WHERE id=?", (now, self._id(row_id), chat))
        return row_id

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
            self._write(f"UPDATE messages SET {', '.join(sets)} WHERE id=?", (*args, self._id(message_id)))

    def delete_message(self, message_id: int) -> None:
        """Delete one message and everything that follows it (its replies, their branches).

        When the chat's current leaf goes with it, the branch on screen moves to the newest
        remaining alternative at that place, or ends at the deleted message's parent.
        """
        real = self._id(message_id)
        rows = self._read("SELECT chat_id, parent_id FROM messages WHERE id=?", (real,))
        self._write("DELETE FROM messages WHERE id=?", (real,))
        if not rows:
            return
        chat, parent = rows[0]["chat_id"], rows[0]["parent_id"]
        leaf = self.current_leaf(chat)
        if leaf is not None and self._read("SELECT 1 FROM messages WHERE id=?", (leaf,)):
            return
        siblings = self.children(chat, parent)
        self.set_leaf(chat, self.leaf_under(siblings[-1].id) if siblings else parent)

    # branches
    def current_leaf(self, chat_id: int) -> int | None:
        """The last message of the branch on screen (None when the chat has no messages)."""
        rows = self._read("SELECT current_leaf FROM chats WHERE id=?", (self._id(chat_id),))
        return rows[0]["current_leaf"] if rows else None

    def set_leaf(self, chat_id: int, message_id: int | None) -> None:
        """Make the branch ending at `message_id` the one on screen."""
        self._write("UPDATE chats SET current_leaf=? WHERE id=?",
                    (None if message_id is None else self._id(message_id), self._id(chat_id)))

    def children(self, chat_id: int, parent_id: int | None) -> list[MessageRow]:
        """The messages that follow `parent_id` (None: the chat's first messages), oldest first.

        These are the alternatives at one place: edited prompts, regenerated replies.
        """
        parent = None if parent_id is None else self._id(parent_id)
        return [m for m in self.messages(chat_id) if m.parent_id == parent]

    def siblings(self, message_id: int) -> list[MessageRow]:
        """The alternatives at `message_id`'s place, itself included, oldest first."""
        rows = self._read("SELECT chat_id, parent_id FROM messages WHERE id=?", (self._id(message_id),))
        return self.children(rows[0]["chat_id"], rows[0]["parent_id"]) if rows else []

    def leaf_under(self, message_id: int) -> int:
        """The end of the newest branch through `message_id` (itself when nothing follows it)."""
        real = self._id(message_id)
        rows = self._read("SELECT chat_id FROM messages WHERE id=?", (real,))
        if not rows:
            return message_id
        newest: dict[int, int] = {}
        for m in self.messages(rows[0]["chat_id"]):
            if m.parent_id is not None:
                newest[m.parent_id] = max(newest.get(m.parent_id, m.id), m.id)
        while real in newest:
            real = newest[real]
        return real

    def branch(self, chat_id: int, leaf: int | None = None) -> list[MessageRow]:
        """The messages from the chat's first one to `leaf` (default: the current leaf), in order."""
        rows = {m.id: m for m in self.messages(chat_id)}
        if not rows:
            return []
        if leaf is None:
            leaf = self.current_leaf(chat_id)
        if leaf not in rows:
            leaf = max(rows)
        path: list[MessageRow] = []
        seen: set[int] = set()
        while leaf is not None and leaf in rows and leaf not in seen:
            seen.add(leaf)
            path.append(rows[leaf])
            leaf = rows[leaf].parent_id
        return path[::-1]

    # search
    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        """Messages in every chat whose text matches `query` (words, each a prefix), best first."""
        words = [w.replace('"', '""') for w in query.split()]
        if not words:
            return []
        match = " ".join(f'"{w}"*' for w in words)
        try:
            rows = self._read(
                "SELECT m.id, m.chat_id, m.role, c.title, "
                "snippet(messages_fts, 0, '«', '»', '…', 12) AS snip "
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid "
                "JOIN chats c ON c.id = m.chat_id WHERE messages_fts MATCH ? "
                "ORDER BY rank LIMIT ?", (match, limit),
            )
        except sqlite3.OperationalError:
            return []  # a query FTS cannot parse finds nothing rather than failing
        return [SearchHit(r["chat_id"], r["id"], r["title"], r["role"], r["snip"]) for r in rows]

    def set_flag(self, message_id: int, bad: bool) -> None:
        """Flag a reply as bad (kept for the learn-from-mistakes pipeline)."""
        self._write("UPDATE messages SET flagged_bad=? WHERE id=?", (int(bad), self._id(message_id)))

    def messages(self, chat_id: int) -> list[MessageRow]:
        rows = self._read("SELECT * FROM messages WHERE chat_id=? ORDER BY id", (self._id(chat_id),))
        return [
            MessageRow(
                r["id"], r["chat_id"], r["role"], r["content"], r["level"], r["trace_json"],
                r["status"], r["created"], bool(r["flagged_bad"]), r["parent_id"],
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
                "COALESCE((SELECT p.content FROM messages p WHERE p.id = m.parent_id AND p.role = 'user'), "
                "(SELECT u.content FROM messages u WHERE u.chat_id = m.chat_id AND u.id < m.id "
                "AND u.role = 'user' ORDER BY u.id DESC LIMIT 1)) AS user_text "
                "FROM messages m WHERE m.flagged_bad = 1 AND m.role = 'assistant' ORDER BY m.id"
            )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot read the history database ({exc}).") from None
        return [FlaggedReply(r["chat_id"], r["id"], r["user_text"] or "", r["content"]) for r in rows]


# ---------------------------------------------------------------- opening whatever is on disk


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 1_000_000:06d}"


def _write_unsaved(path: Path, queue: list[_Op], ids: dict[int, int]) -> Path | None:
    """Keep writes that never reached the database as JSON lines next to it (or in the temp folder)."""
    lines = []
    for op in queue:
        args = [ids.get(a.n, f"pending:{a.n}") if isinstance(a, _Pending) else a for a in op.args]
        lines.append(json.dumps({"sql": op.sql, "args": args, "row": op.makes}, ensure_ascii=False))
    name = f"{path.name if str(path) != ':memory:' else 'history'}.unsaved-{_stamp()}.jsonl"
    import tempfile

    for folder in ((path.parent,) if str(path) != ":memory:" else ()) + (Path(tempfile.gettempdir()),):
        try:
            target = folder / name
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            return target
        except OSError:
            continue
    return None


def move_aside(path: Path) -> Path:
    """Rename a damaged database and its -wal/-shm to `<name>.damaged-<timestamp>`; return the new path."""
    stamp = _stamp()
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(path.with_name(f"{path.name}.damaged-{stamp}{suffix}"))
    path.rename(target)
    return target


def _can_write(folder: Path) -> bool:
    """Whether a file can be created in `folder` (tried, not guessed: root ignores the mode bits)."""
    probe = folder / f".steerchat-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _memory_copy(path: Path) -> Store:
    """An in-memory store holding what can still be read from `path` (nothing when it cannot)."""
    store = Store(":memory:")
    if path.is_file():
        try:
            src = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True)
            try:
                src.backup(store._db)
            finally:
                src.close()
            upgrades.upgrade(store._db, path)
            store._db.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, StoreError):
            store = Store(":memory:")
    store.path = path
    store.in_memory = True
    return store


def _check_read_only(path: Path) -> None:
    """Raise the sqlite3 error a damaged file gives, read-only, before anything may write to it.

    A read-write connection on a damaged file may replay or drop its -wal (and so change
    what is moved aside); a read-only one cannot. Busy or unreadable here is left to the
    normal open.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            raise sqlite3.DatabaseError("file is not a database")
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return
    try:
        result = db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({result})")
    except sqlite3.DatabaseError as exc:
        if _code(exc) in _DAMAGED:
            raise
    finally:
        db.close()


def open_store(path: Path | str) -> tuple[Store, str | None]:
    """Open the history at `path` whatever state it is in; return it and a one-line warning or None.

    - damaged (not a database, truncated, malformed): the file (with -wal/-shm) is moved to
      `<name>.damaged-<timestamp>`, never deleted, and a fresh database starts in its place;
    - the folder or the file cannot be written: an in-memory copy of what can be read;
    - locked by another process: opened anyway, writes wait in the retry queue; if it cannot
      even be read, an in-memory store until the next start;
    - newer than this steerchat: an in-memory store, the file left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _memory_copy(path), (f"Cannot create {path.parent} ({exc.strerror}); "
                                    "chats are kept in memory only and will not be saved.")
    if path.is_dir():
        return _memory_copy(path), f"{path} is a folder, not a database; chats are kept in memory only."
    if not _can_write(path.parent) or (path.exists() and not os.access(path, os.W_OK)):
        return _memory_copy(path), (f"{path} cannot be written (read-only folder or file); "
                                    "chats are shown but new ones are kept in memory only.")
    try:
        _check_read_only(path)  # damage is found without a write connection touching the files
        return Store(path, check=True), None
    except StoreError as exc:
        return _memory_copy(path) if "schema version" not in str(exc) else Store(":memory:"), (
            f"{exc} Chats are kept in memory only.")
    except sqlite3.Error as exc:
        code = _code(exc)
        if code in _DAMAGED:
            try:
                moved = move_aside(path)
            except OSError as move_exc:
                return Store(":memory:"), (f"{path} is damaged and could not be moved aside "
                                           f"({move_exc.strerror}); chats are kept in memory only.")
            try:
                store = Store(path)
            except sqlite3.Error:
                return Store(":memory:"), f"{path} was damaged (moved to {moved.name}); chats are kept in memory only."
            return store, f"{path} was damaged; moved it to {moved.name} and started a fresh history."
        if code in _BUSY:
            return _memory_copy(path), (f"{path} is locked by another program; chats are kept in memory "
                                        "only until the next start.")
        return _memory_copy(path), f"Cannot open {path} ({exc}); chats are kept in memory only."
