"""The one error the chat store raises for a database it cannot use as it stands.

Its own type so callers (the UI, the align pipeline) can tell a user which file is wrong
and what to do, without catching sqlite3 errors.
"""

from __future__ import annotations


class StoreError(Exception):
    """A history database is missing, is not a steerchat database, or is too new to read."""
