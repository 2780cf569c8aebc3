"""The settings form: system prompt, default level, sampling, model and SAE, saved to config.toml.

The system prompt and sampling apply to the open session at once; the model and SAE
take effect the next time steerchat starts.
"""

from __future__ import annotations

from dataclasses import replace

from rich.text import Text
from steerchat.engine.core.api import SamplingSettings
from steerchat.tui.config import Config
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, Static, TextArea


class SettingsScreen(ModalScreen[Config | None]):
    """Edits a copy of the config; dismisses with the new Config, or None when cancelled."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("ctrl+s", "save", "Save", id="settings.save"),
    ]

    DEFAULT_CSS = """
    SettingsScreen { align: center middle; }
    SettingsScreen #form { width: 84; height: 90%; border: round $primary; padding: 0 1; }
    SettingsScreen Label { margin-top: 1; color: $text-muted; }
    SettingsScreen TextArea { height: 6; }
    SettingsScreen Horizontal { height: auto; }
    SettingsScreen Horizontal Input { width: 1fr; }
    SettingsScreen #error { color: $error; }
    SettingsScreen Button { margin: 1 2 0 0; }
    """

    def __init__(self, config: Config, level_names: list[str]) -> None:
        super().__init__()
        self.config = config
        self.level_names = level_names

    def compose(self) -> ComposeResult:
        cfg, sampling = self.config, self.config.sampling
        with VerticalScroll(id="form") as form:
            form.border_title = "Settings"
            yield Label("System prompt (applies from the next message)")
            yield TextArea(cfg.system or "", id="system", soft_wrap=True)
            yield Label("Default safety level (used at start)")
            options = [(name, name) for name in self.level_names]
            yield Select(options, value=cfg.level if cfg.level in self.level_names else Select.NULL,
                         id="level", allow_blank=True, prompt="the model's default")
            yield Label("Sampling: temperature (0 = greedy) · top-p · top-k · max new tokens · seed "
                        "(empty: the model's own)")
            with Horizontal():
                for key in ("temperature", "top_p", "top_k"):
                    value = getattr(sampling, key)
                    yield Input("" if value is None else str(value), type="integer" if key == "top_k" else "number",
                                id=key, placeholder="model's")
                yield Input(str(sampling.max_new_tokens), type="integer", id="max_new_tokens")
                yield Input("" if sampling.seed is None else str(sampling.seed), type="integer", id="seed",
                            placeholder="random")
            yield Checkbox("Loop guard: end a reply that keeps repeating itself", sampling.loop_guard,
                           id="loop_guard")
            yield Label("Model and SAE (apply at the next start)")
            with Horizontal():
                yield Input(cfg.model, id="model")
                yield Input(cfg.sae or "", id="sae", placeholder="none")
            yield Static("", id="error")
            with Horizontal():
                yield Button("Save (ctrl+s)", id="save", variant="primary")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def _value(self, wid: str) -> str:
        return self.query_one(f"#{wid}", Input).value.strip()

    def read(self) -> Config:
        """The form as a Config; raises ValueError naming the field that is wrong."""
        def number(wid: str, kind=float):  # empty: None, the model's own
            return kind(self._value(wid)) if self._value(wid) else None

        try:
            sampling = SamplingSettings(
                temperature=number("temperature"),
                top_p=number("top_p"),
                top_k=number("top_k", int),
                max_new_tokens=int(self._value("max_new_tokens") or 256),
                seed=number("seed", int),
                repetition_penalty=self.config.sampling.repetition_penalty,
                loop_guard=self.query_one("#loop_guard", Checkbox).value,
            )
        except ValueError as exc:
            raise ValueError(f"A sampling value is not a number ({exc}).") from exc
        if sampling.top_p is not None and not 0 < sampling.top_p <= 1:
            raise ValueError("Top-p must be above 0 and at most 1.")
        if (sampling.temperature is not None and sampling.temperature < 0) or sampling.max_new_tokens < 1:
            raise ValueError("Temperature must be 0 or more and max new tokens at least 1.")
        if sampling.top_k is not None and sampling.top_k < 0:
            raise ValueError("Top-k must be 0 (none) or more.")
        if not self._value("model"):
            raise ValueError("The model name cannot be empty.")
        level = self.query_one("#level", Select).value
        return replace(
            self.config,
            system=self.query_one("#system", TextArea).text.strip() or None,
            level=None if level is Select.NULL else str(level),
            sampling=sampling,
            model=self._value("model"),
            sae=self._value("sae") or None,
        )

    def action_save(self) -> None:
        try:
            config = self.read()
        except ValueError as exc:
            self.query_one("#error", Static).update(Text(str(exc)))
            return
        self.dismiss(config)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.action_cancel()
