"""The chat store: every chat, message and trace in one SQLite database, with a schema version.

Shared by the UI (which writes chats as they happen) and the align pipeline (which reads
the replies users flagged as bad). Pure Python, no torch, no Textual.
"""

from steerchat.store.errors import StoreError
from steerchat.store.history import (
    ChatRow,
    FlaggedReply,
    MessageRow,
    SearchHit,
    Store,
    move_aside,
    open_store,
)

__all__ = ["ChatRow", "FlaggedReply", "MessageRow", "SearchHit", "Store", "StoreError", "move_aside", "open_store"]
