"""The safety slider: one notch per engine level, moved with ←/→ or the mouse.

The levels come from the session (`session.levels`), never from the UI, so a model with
a calibrated scale shows its own notches. Moving it posts `SafetySlider.Changed`.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget


class SafetySlider(Widget, can_focus=True):
    """A horizontal slider over named levels."""

    BINDINGS = [
        Binding("left", "move(-1)", "Safer less", show=False, id="slider.left"),
        Binding("right", "move(1)", "Safer more", show=False, id="slider.right"),
        Binding("home", "jump(0)", "Least safe", show=False, id="slider.home"),
        Binding("end", "jump(-1)", "Safest", show=False, id="slider.end"),
    ]

    DEFAULT_CSS = """
    SafetySlider {
        height: 3;
        width: 1fr;
        padding: 0 1;
    }
    SafetySlider:focus {
        background: $boost;
    }
    """

    index: reactive[int] = reactive(0)

    class Changed(Message):
        """The slider moved to `name` (position `index`)."""

        def __init__(self, slider: "SafetySlider", index: int, name: str) -> None:
            super().__init__()
            self.slider = slider
            self.index = index
            self.name = name

        @property
        def control(self) -> "SafetySlider":
            return self.slider

    def __init__(
        self,
        names: list[str],
        descriptions: list[str] | None = None,
        index: int = 0,
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.names = list(names) or ["Off"]
        self.descriptions = list(descriptions or [""] * len(self.names))
        self.set_reactive(SafetySlider.index, max(0, min(index, len(self.names) - 1)))

    @property
    def value(self) -> str:
        """The selected level's name."""
        return self.names[self.index]

    def set_levels(self, names: list[str], descriptions: list[str], index: int) -> None:
        """Replace the notches (a new model brings its own scale) without posting Changed."""
        self.names = list(names)
        self.descriptions = list(descriptions)
        self.set_reactive(SafetySlider.index, max(0, min(index, len(self.names) - 1)))
        self.refresh()

    def select(self, name: str) -> None:
        """Move to the level called `name` (case-insensitive); posts Changed."""
        lowered = [n.lower() for n in self.names]
        self.index = lowered.index(name.lower())

    def validate_index(self, index: int) -> int:
        return max(0, min(index, len(self.names) - 1))

    def watch_index(self, old: int, new: int) -> None:
        if old != new:
            self.post_message(self.Changed(self, new, self.names[new]))

    def action_move(self, step: int) -> None:
        self.index += step

    def action_jump(self, where: int) -> None:
        self.index = where % len(self.names)

    def _cell(self) -> int:
        return max(1, self.content_size.width // len(self.names))

    def on_click(self, event: events.Click) -> None:
        # Click anywhere in a notch's column selects that notch.
        x = event.x - self.styles.padding.left
        self.index = x // self._cell()
        self.focus()

    def render(self) -> Text:
        n = len(self.names)
        cell = self._cell()
        width = cell * n
        centres = [i * cell + cell // 2 for i in range(n)]
        track = Text()
        for x in range(width):
            if x in centres:
                i = centres.index(x)
                if i == self.index:
                    track.append("●", style="bold magenta")
                else:
                    track.append("◆" if i < self.index else "○", style="magenta" if i < self.index else "dim")
            elif x < centres[self.index] and x > centres[0]:
                track.append("━", style="magenta")
            elif centres[0] < x < centres[-1]:
                track.append("─", style="dim")
            else:
                track.append(" ")
        labels = Text()
        for i, name in enumerate(self.names):
            name = name[: max(1, cell - 2)]
            left = (cell - len(name) - 2) // 2
            labels.append(" " * left)
            labels.append(f" {name} ", style="reverse bold" if i == self.index else "")
            labels.append(" " * (cell - left - len(name) - 2))
        description = Text(self.descriptions[self.index] if self.index < len(self.descriptions) else "", style="dim italic")
        description.truncate(max(1, self.content_size.width), overflow="ellipsis")
        return Text("\n").join([track, labels, description])
