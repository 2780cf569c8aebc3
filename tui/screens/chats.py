"""The chat list: open, rename, delete and export saved chats, and search across all of them.

Typing in the search box lists the messages that match (SQLite FTS5); Enter on a hit opens
that chat on the branch of that message, with the message selected.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from steerchat.tui.export import export_chat
from steerchat.tui.sanitize import one_line
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from steerchat.store import Store


class ChatListScreen(ModalScreen["int | tuple[int, int] | None"]):
    """Lists saved chats; dismisses with the id of the chat to open, (chat, message) for a
    search hit, or None."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="chats.close"),
        Binding("r", "rename", "Rename", id="chats.rename"),
        Binding("d", "delete", "Delete", id="chats.delete"),
        Binding("m", "export('md')", "Export .md", id="chats.export_md"),
        Binding("j", "export('json')", "Export .json", id="chats.export_json"),
    ]

    DEFAULT_CSS = """
    ChatListScreen { align: center middle; }
    ChatListScreen #box { width: 90; height: 80%; border: round $primary; padding: 0 1; }
    ChatListScreen OptionList { height: 1fr; }
    ChatListScreen #hint { color: $text-muted; }
    ChatListScreen #rename { display: none; }
    ChatListScreen #rename.-renaming { display: block; }
    """

    def __init__(self, store: Store, export_dir: Path, current: int | None = None, search: bool = False) -> None:
        super().__init__()
        self.store = store
        self.export_dir = export_dir
        self.current = current
        self.start_in_search = search
        self._confirm_delete: int | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="box") as box:
            box.border_title = "Chats"
            yield Input(placeholder="Search all chats (type words; Enter or ↓ goes to the hits)", id="search")
            yield OptionList(id="chat-list")
            yield Input(placeholder="New title, Enter to save, Esc to cancel", id="rename")
            yield Static(Text("Enter open · r rename · d delete · m/j export Markdown/JSON · Tab search · Esc close"),
                         id="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        (self.query_one("#search", Input) if self.start_in_search else self.query_one(OptionList)).focus()

    def reload(self) -> None:
        """Refill the list from the store, keeping the highlight where it was."""
        listing = self.query_one(OptionList)
        keep = listing.highlighted
        listing.clear_options()
        query = self.query_one("#search", Input).value.strip()
        if query:
            for hit in self.store.search(query):
                row = Text(f"{one_line(hit.chat_title, 24):<24} ", style="bold", no_wrap=True, overflow="ellipsis")
                row.append("You: " if hit.role == "user" else "Reply: ", style="dim")
                for i, part in enumerate(one_line(hit.snippet, 200).replace("»", "«").split("«")):
                    row.append(part, style="reverse" if i % 2 else "")
                listing.add_option(Option(row, id=f"hit:{hit.chat_id}:{hit.message_id}"))
            if not listing.option_count:
                listing.add_option(Option(Text("No message matches.", style="dim"), id="none", disabled=True))
            listing.highlighted = 0 if listing.get_option_at_index(0).id != "none" else None
            return
        for chat in self.store.chats():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(chat.updated))
            row = Text(f"{one_line(chat.title, 40):<40} ", style="bold" if chat.id == self.current else "",
                       no_wrap=True, overflow="ellipsis")
            # one_line: control characters and bidi overrides (U+202E) cannot shift the columns.
            row.append(f"{chat.messages:>3} msgs  {when}  {one_line(chat.model, 40)}", style="dim")
            listing.add_option(Option(row, id=str(chat.id)))
        if listing.option_count:
            listing.highlighted = min(keep or 0, listing.option_count - 1)

    def _selected(self) -> int | None:
        listing = self.query_one(OptionList)
        if listing.highlighted is None:
            return None
        option_id = listing.get_option_at_index(listing.highlighted).id
        if option_id == "none":
            return None
        return int(option_id.split(":")[1]) if option_id.startswith("hit:") else int(option_id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id.startswith("hit:"):
            _, chat_id, message_id = event.option.id.split(":")
            # open the chat on that message's branch
            self.store.set_leaf(int(chat_id), self.store.leaf_under(int(message_id)))
            self.dismiss((int(chat_id), int(message_id)))
            return
        self.dismiss(int(event.option.id))

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            self.reload()

    def on_key(self, event) -> None:
        if event.key == "down" and self.focused is self.query_one("#search", Input):
            event.stop()
            self.query_one(OptionList).focus()

    def action_close(self) -> None:
        rename = self.query_one("#rename", Input)
        if rename.has_class("-renaming"):
            rename.remove_class("-renaming")
            self.query_one(OptionList).focus()
            return
        self.dismiss(None)

    def action_rename(self) -> None:
        chat_id = self._selected()
        if chat_id is None:
            return
        rename = self.query_one("#rename", Input)
        rename.value = self.store.chat(chat_id).title
        rename.add_class("-renaming")
        rename.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self.query_one(OptionList).focus()
            return
        chat_id = self._selected()
        title = " ".join(event.value.split())
        if chat_id is not None and title:
            self.store.rename_chat(chat_id, title)
        event.input.remove_class("-renaming")
        self.reload()
        self.query_one(OptionList).focus()

    def action_delete(self) -> None:
        chat_id = self._selected()
        if chat_id is None:
            return
        # Deleting is final, so it takes a second press on the same chat.
        if self._confirm_delete != chat_id:
            self._confirm_delete = chat_id
            self.notify("Press d again to delete this chat.", severity="warning")
            return
        self._confirm_delete = None
        self.store.delete_chat(chat_id)
        self.notify("Chat deleted.")
        self.reload()

    def action_export(self, fmt: str) -> None:
        chat_id = self._selected()
        if chat_id is None:
            return
        path = export_chat(self.store, chat_id, self.export_dir, fmt)
        self.notify(f"Exported to {path}", markup=False)
