"""The loading screen: download, conversion and quantisation progress while the model loads.

The model loads in a thread worker, so this screen stays responsive. If the engine says
the model is not available (offline, not cached), it says so and offers the models that
ship as wheels and run offline (the starter and Qwen2.5-Coder), each with its size and the
CPU speed measured for it (registry `size_mb`, `cpu_tok_s`).
"""

from __future__ import annotations

from rich.text import Text
from steerchat.engine.core.api import LoadProgress
from steerchat.models import STARTER, ModelEntry, registry
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Center, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, ProgressBar, Static

STAGES = {
    "download": "Downloading",
    "assemble": "Assembling",
    "convert": "Converting",
    "load": "Loading weights",
    "quantise": "Quantising",
    "sae": "Loading the SAE",
    "ready": "Ready",
}


# The steps shown as a checklist; "load" and "quantise" are one step (quantising is loading).
STEPS = (("download", "Download"), ("convert", "Convert"), ("quantise", "Load / quantise"), ("sae", "SAE"))
STEP_OF = {"download": 0, "assemble": 1, "convert": 1, "load": 2, "quantise": 2, "sae": 3, "ready": 4}


def checklist(current: str) -> Text:
    """Steps before `current` ticked, `current` marked, later ones open."""
    at = STEP_OF.get(current, 0)
    out = Text()
    for i, (_, label) in enumerate(STEPS):
        mark, style = ("✓", "green") if i < at else ("●", "bold") if i == at else ("○", "dim")
        out.append(f"{mark} {label}   ", style=style)
    return out


def offline_models() -> list[ModelEntry]:
    """The registry's models that ship inside wheels (run offline), the starter first."""
    entries = [e for e in registry().values() if e.is_gguf_wheel]
    return sorted(entries, key=lambda e: e.name != STARTER)


def offline_label(entry: ModelEntry) -> str:
    facts = [f"{entry.size_mb} MB" if entry.size_mb else "", f"~{entry.cpu_tok_s:g} tok/s" if entry.cpu_tok_s else ""]
    facts = ", ".join(f for f in facts if f)
    what = "the starter model" if entry.name == STARTER else "the offline model"
    return f"Use {what} {entry.name}" + (f" ({facts})" if facts else "")


def _button_id(name: str) -> str:
    return "starter" if name == STARTER else "use-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class LoadingScreen(Screen):
    """Shows one model's loading progress, or why it could not load."""

    BINDINGS = [
        Binding("s", "starter", "Use starter model", id="loading.starter"),
        Binding("q", "app.quit", "Quit", show=False, id="loading.quit"),
    ]

    DEFAULT_CSS = """
    LoadingScreen { align: center middle; }
    LoadingScreen #box { width: 72; height: auto; border: round $primary; padding: 1 2; }
    LoadingScreen #title { text-style: bold; margin-bottom: 1; }
    LoadingScreen #steps { margin-bottom: 1; }
    LoadingScreen ProgressBar { margin: 1 0; }
    LoadingScreen #error { color: $error; margin: 1 0; }
    LoadingScreen #warning { color: $warning; margin-bottom: 1; }
    LoadingScreen Button { margin-right: 2; }
    LoadingScreen #actions { height: auto; }
    LoadingScreen #actions Button { margin-bottom: 1; }
    """

    class UseModel(Message):
        """The user asked to load another model (the starter)."""

        def __init__(self, model: str) -> None:
            super().__init__()
            self.model = model

    def __init__(self, model: str, warning: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.warning = warning
        self.failed = False

    def compose(self) -> ComposeResult:
        with Vertical(id="box"):
            yield Static(Text(f"Opening {self.model}"), id="title")
            if self.warning:
                yield Static(Text(self.warning), id="warning")
            yield Static(checklist("download"), id="steps")
            yield Static(Text("Starting…"), id="stage")
            with Center():
                yield ProgressBar(total=None, show_eta=False, id="bar")
            yield Static("", id="detail")
            yield Static("", id="error")
            with Vertical(id="actions"):
                for i, entry in enumerate(offline_models()):
                    yield Button(offline_label(entry), id=_button_id(entry.name), name=entry.name,
                                 variant="primary" if i == 0 else "default")
                yield Button("Quit", id="quit")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#actions").display = False
        self.query_one("#error").display = False

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # The starter key only means something once loading failed.
        if action == "starter":
            return self.failed and self.model != STARTER
        return True

    def show_progress(self, step: LoadProgress) -> None:
        """Update the stage line and the bar from one engine progress report."""
        stage = STAGES.get(step.stage, step.stage.capitalize())
        self.query_one("#steps", Static).update(checklist(step.stage))
        self.query_one("#stage", Static).update(Text(f"{stage}: {step.message}"))
        bar = self.query_one("#bar", ProgressBar)
        if step.total:
            bar.update(total=step.total, progress=step.done)
            if step.stage in ("download", "assemble") and step.total > 1024:
                detail = f"{step.done / 2**20:.1f} of {step.total / 2**20:.1f} MiB"
            else:
                detail = ""
            self.query_one("#detail", Static).update(Text(detail))
        else:
            bar.update(total=None)

    def show_error(self, message: str, offer_starter: bool) -> None:
        """Loading failed: say why in the engine's words and offer a way on."""
        self.failed = True
        error = self.query_one("#error", Static)
        error.update(Text(message))
        error.display = True
        self.query_one("#bar").display = False
        self.query_one("#stage", Static).update(Text(f"Could not open {self.model}."))
        self.query_one("#actions").display = True
        shown = []
        for entry in offline_models():
            button = self.query_one(f"#{_button_id(entry.name)}", Button)
            button.display = offer_starter and self.model != entry.name
            if button.display:
                shown.append(button)
        (shown[0] if shown else self.query_one("#quit", Button)).focus()
        self.refresh_bindings()

    def action_starter(self) -> None:
        self.post_message(self.UseModel(STARTER))

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "starter":
            self.action_starter()
        elif event.button.id != "quit" and event.button.name:
            self.post_message(self.UseModel(event.button.name))
        else:
            self.app.exit(return_code=1)
