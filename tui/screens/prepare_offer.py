"""The offer shown when a model opens without an SAE: say so in one sentence and offer to
prepare it (`steerchat prepare MODEL`), with the plan's estimate, instead of a slider that
silently does less.

No torch here: the estimate and the preparation run as `python -m steerchat prepare ...`
subprocesses in thread workers, their output shown line by line.
"""

from __future__ import annotations

import subprocess
import sys

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Log, Static


def no_sae_sentence(model: str) -> str:
    return (f"{model} has no SAE yet, so the safety slider can only add guidance prompts: it cannot read "
            "or steer refusal features.")


class PrepareOfferScreen(ModalScreen[bool]):
    """Offer to run `steerchat prepare MODEL`; dismissed with True once it finished."""

    BINDINGS = [Binding("escape", "later", "Not now")]
    DEFAULT_CSS = """
    PrepareOfferScreen { align: center middle; }
    PrepareOfferScreen > Vertical { width: 90; height: auto; max-height: 90%; border: thick $accent;
                                    background: $surface; padding: 1 2; }
    PrepareOfferScreen #estimate { color: $text-muted; margin: 1 0; }
    PrepareOfferScreen Log { height: 12; display: none; }
    PrepareOfferScreen.-running Log { display: block; }
    PrepareOfferScreen Horizontal { height: auto; }
    """

    # the command line behind the offer; tests replace it with a stand-in
    command: tuple[str, ...] = (sys.executable, "-m", "steerchat", "prepare")

    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self.process: subprocess.Popen | None = None
        self.finished: bool | None = None

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text(no_sae_sentence(self.model)), id="sentence")
            yield Static(Text(f"Prepare it now? `steerchat prepare {self.model}` downloads what it needs, gets an "
                              "SAE (a published one, or trains one), finds refusal features, fits the harm gate and "
                              "calibrates the levels; it resumes if stopped."), id="what")
            yield Static(Text("Estimating the time…"), id="estimate")
            yield Log(id="log")
            with Horizontal():
                yield Button("Prepare now", id="prepare", variant="primary")
                yield Button("Not now", id="later")

    def on_mount(self) -> None:
        self.estimate()

    # the plan's estimate
    @work(thread=True, exclusive=True, group="estimate")
    def estimate(self) -> None:
        try:
            out = subprocess.run([*self.command, self.model, "--plan"], capture_output=True, text=True, timeout=120)
            total = next((line for line in out.stdout.splitlines() if line.startswith("total")), None)
            text = (f"Plan estimate for this machine: {' '.join(total.split()[1:2])} in all (an estimate, not a "
                    "measurement)." if total and out.returncode == 0 else "No estimate: " +
                    (out.stderr.strip().splitlines() or ["the plan did not run"])[-1])
        except (OSError, subprocess.SubprocessError) as exc:
            text = f"No estimate ({type(exc).__name__})."
        self.app.call_from_thread(self._show_estimate, text)

    def _show_estimate(self, text: str) -> None:
        if self.is_attached:
            self.query_one("#estimate", Static).update(Text(text))

    # running it
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "later":
            self.action_later()
        elif event.button.id == "prepare" and self.process is None:
            event.button.disabled = True
            self.add_class("-running")
            self.run_prepare()

    @work(thread=True, exclusive=True, group="prepare")
    def run_prepare(self) -> None:
        try:
            self.process = subprocess.Popen([*self.command, self.model], stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True, bufsize=1)
        except OSError as exc:
            self.app.call_from_thread(self._done, False, f"could not start steerchat prepare ({exc})")
            return
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.app.call_from_thread(self._line, line.rstrip("\n"))
        code = self.process.wait()
        self.app.call_from_thread(self._done, code == 0, None if code == 0 else f"stopped with exit status {code}")

    def _line(self, line: str) -> None:
        if self.is_attached:
            self.query_one(Log).write_line(line.split("\r")[-1])

    def _done(self, ok: bool, error: str | None) -> None:
        self.finished = ok
        if ok:
            self.app.notify(f"{self.model} is ready to steer; open it again to load its SAE.", timeout=10)
            self.dismiss(True)
        elif self.is_attached:
            self.query_one("#estimate", Static).update(Text(f"Preparing failed: {error}. Running it again resumes."))
            self.query_one("#prepare", Button).disabled = False
            self.process = None

    def action_later(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # resumable: the next run continues from prepare.json
        self.dismiss(False)
