"""The chat list: open, rename, delete and export saved chats."""

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


class ChatListScreen(ModalScreen[int | None]):
    """Lists saved chats; dismisses with the id of the chat to open, or None."""

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
    ChatListScreen Input { display: none; }
    ChatListScreen Input.-renaming { display: block; }
    """

    def __init__(self, store: Store, export_dir: Path, current: int | None = None) -> None:
        super().__init__()
        self.store = store
        self.export_dir = export_dir
        self.current = current
        self._confirm_delete: int | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="box") as box:
            box.border_title = "Chats"
            yield OptionList(id="chat-list")
            yield Input(placeholder="New title, Enter to save, Esc to cancel", id="rename")
            yield Static(Text("Enter open · r rename · d delete · m/j export Markdown/JSON · Esc close"), id="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(OptionList).focus()

    def reload(self) -> None:
        """Refill the list from the store, keeping the highlight where it was."""
        listing = self.query_one(OptionList)
        keep = listing.highlighted
        listing.clear_options()
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
        return int(listing.get_option_at_index(listing.highlighted).id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(int(event.option.id))

    def action_close(self) -> None:
        rename = self.query_one(Input)
        if rename.has_class("-renaming"):
            rename.remove_class("-renaming")
            self.query_one(OptionList).focus()
            return
        self.dismiss(None)

    def action_rename(self) -> None:
        chat_id = self._selected()
        if chat_id is None:
            return
        rename = self.query_one(Input)
        rename.value = self.store.chat(chat_id).title
        rename.add_class("-renaming")
        rename.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
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
