"""Why refused: what happened on one turn, in plain words and numbers.

The judge's verdict and evidence; whether the refusal features were active on their own
or pushed there by steering; which prompt tokens lit the harm features; the guidance in
force; and a button that answers the same turn with steering off, side by side.
"""

from __future__ import annotations

import threading

from rich.markup import escape
from rich.text import Text
from steerchat.engine.core.api import ChatSession
from steerchat.engine.core.levels import GuidanceMode, SafetyLevel, SafetySettings
from steerchat.engine.core.trace import TurnTrace
from steerchat.tui.sanitize import sanitize
from steerchat.tui.widgets.features_panel import (
    feature_name,
    natural_activation,
    rank_refusal_states,
)
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Markdown, Static
from textual.widgets.markdown import MarkdownStream

NATURAL_SHARE = 0.5  # natural activation ≥ half the reference counts as "active on its own"


def verdict_text(trace: TurnTrace) -> str:
    v = trace.verdict
    if v is None:
        return "The refusal judge gave no verdict for this reply."
    words = "a refusal" if v.refused else "an answer, not a refusal"
    text = f"The refusal judge reads this reply as {words} (score {v.score:.2f})."
    if v.phrase:
        text += f' It matched the refusal phrase "{sanitize(v.phrase)}".'
    if v.opening_log_odds is not None:
        text += f" The log-odds of a refusal opening at the first reply token were {v.opening_log_odds:+.1f}."
    if v.evidence:
        text += " Evidence: " + "; ".join(sanitize(e) for e in v.evidence) + "."
    origin = origin_text(trace)
    return f"{text}\n{origin}" if origin else text


def origin_text(trace: TurnTrace) -> str | None:
    """Whose refusal it was: the model's own, or one that steering made (None for an answer, or a
    steered turn recorded before steerchat kept the unsteered opening)."""
    if trace.verdict is None or not trace.verdict.refused:
        return None
    if trace.unsteered_refused is None:
        if any(st.target is not None for st in trace.refusal_features):
            return None
        if trace.conditional and trace.gate is not None and not trace.gate.open:
            return ("The harm gate stayed closed, so this level did not steer: the refusal is the model's own.")
        return "Nothing was steered on this turn: the refusal is the model's own."
    opening = sanitize(" ".join((trace.unsteered_opening or "").split()))
    if trace.lowered:
        return ("Steering pushed the refusal features down on this turn and the model refused anyway: the refusal "
                "is its own.")
    if trace.unsteered_refused:
        return (f"With steering off the model refuses too (it opens \u201c{opening}\u2026\u201d): the refusal is "
                "its own, and steering only held it there.")
    return (f"With steering off the model would have answered (it opens \u201c{opening}\u2026\u201d): steering "
            "pushed it into this refusal.")


SHOWN_FEATURES = 4  # with more refusal features than this, the ones steering moved most are detailed


def _feature_line(st, lowered: bool = False) -> str:
    name = feature_name(st.feature, st.label)
    natural = max(st.natural_reply_max, st.natural_prompt_max)
    own = natural >= NATURAL_SHARE * st.reference_activation
    line = (
        f"Feature {name} reached {st.natural_reply_max:.1f} on the reply and "
        f"{st.natural_prompt_max:.1f} on the prompt on its own; its reference activation "
        f"(the clamp at s=1) is {st.reference_activation:.1f}."
    )
    if st.target is None:
        line += " Steering did not touch it"
        line += ", so it was active on its own." if own else ", and it stayed weak."
    elif lowered:  # a lowering clamp only ever pushes down, to the target
        line += (f" Steering pushed it down to {st.target:.1f}." if st.target < natural
                 else f" Steering would have pushed it down to {st.target:.1f}; it stayed below that on its own.")
    elif st.target > natural:
        line += f" Steering clamped it to {st.target:.1f}"
        line += (
            ", but it was already active on its own."
            if own
            else f", {st.target / max(natural, 1e-6):.0f}× its natural level: pushed there by steering."
            if natural > 0
            else ": pushed there by steering from zero."
        )
    else:
        line += f" Steering held it at {st.target:.1f}, below its natural level."
    return line


def steering_text(trace: TurnTrace) -> str:
    """Were the refusal features active on their own, or pushed there by steering?"""
    states = list(trace.refusal_features)
    if not states:
        return "This model has no refusal features, so nothing was steered."
    lowered = trace.lowered
    if len(states) <= SHOWN_FEATURES:
        return "\n\n".join(_feature_line(st, lowered) for st in states)

    natural = natural_activation
    own = sum(natural(st) >= NATURAL_SHARE * st.reference_activation for st in states)
    clamped = [st for st in states if st.target is not None]
    if clamped and lowered:
        down = sum(st.target < natural(st) for st in clamped)
        head = (f"Steering pushed the {len(states)} refusal features down, to make refusing less likely: {down} of "
                f"them were above their target and were lowered. {own} were active on their own. "
                f"The {SHOWN_FEATURES} it moved most:")
    elif clamped:
        pushed = sum(st.target > natural(st) and natural(st) < NATURAL_SHARE * st.reference_activation
                     for st in clamped)
        head = (f"Steering clamped all {len(states)} refusal features together. {own} of them were active on "
                f"their own; {pushed} were pushed up by steering. The {SHOWN_FEATURES} it moved most:")
    else:
        head = (f"This model has {len(states)} refusal features; steering did not touch them. "
                f"{own} of them were active on their own. The {SHOWN_FEATURES} most active, against their reference:")
    ranked = rank_refusal_states(states, lowered)
    return "\n\n".join([head, *(_feature_line(st, lowered) for st in ranked[:SHOWN_FEATURES])])


def gate_text(trace: TurnTrace) -> str:
    level = f"Level {trace.level}: guidance {trace.guidance_mode}, strength s={trace.strength:g}"
    open_s = trace.open_strength
    if trace.lowering_only:
        level += (f", only lowering refusal: where the prompt looks benign, refusal features are pushed down to "
                  f"{trace.strength:g}× their reference.")
    elif trace.conditional and open_s is not None:
        level += (f", only when the prompt looks harmful; where it looks benign, refusal features are pushed "
                  f"down to {open_s:g}× their reference.")
    else:
        level += ", only when the prompt looks harmful." if trace.conditional else "."
    gate = trace.gate
    if gate is None:
        return level
    lowers = trace.lowering_only or (trace.conditional and open_s is not None)
    # a score between the two thresholds: not harmful enough to raise, not benign enough to lower
    between = lowers and not gate.open and gate.benign is False
    state = "open, so steering applied" if gate.open else "closed, so steering was skipped"
    if lowers and not gate.open:
        state = ("closed, but not below the benign threshold, so refusal was left as the model has it"
                 if between else "closed, so refusal was pushed down instead")
    if trace.lowering_only and gate.open:
        state = "open, so this level left refusal as the model has it (it only lowers refusal on benign prompts)"
    elif not trace.conditional and not trace.lowering_only:
        state = "open" if gate.open else "closed"
        state += " (this level steers regardless)" if trace.strength > 0 else ""
    against = f"a threshold of {gate.threshold:.2f}"
    if lowers and gate.benign_threshold is not None:
        against += f" (refusal is pushed down only below {gate.benign_threshold:.2f})"
    text = f"{level}\nThe harm gate scored the prompt {gate.score:.2f} against {against}: {state}."
    if gate.method == "probe":
        text += "\nIt is a linear probe on the residual stream; a token's share of the score is the probe's dot product with it."
    if gate.signals:
        text += "\nThe score is the sum of: " + ", ".join(f"{name} {value:+.2f}" for name, value in gate.signals) + "."
    return text


def harm_tokens(trace: TurnTrace) -> Text:
    """The prompt tokens that lit the harm features, strongest first."""
    tokens = trace.gate.top_tokens if trace.gate else []
    if not tokens:
        return Text("No prompt token lit the harm features.", style="dim")
    out = Text("Prompt tokens that lit the harm features: ")
    for token, score in sorted(tokens, key=lambda t: t[1], reverse=True)[:10]:
        out.append(f" {sanitize(token)} ", style="bold white on dark_red")
        out.append(f" {score:.1f}  ", style="dim")
    bottom = getattr(trace.gate, "bottom_tokens", None) or []
    if bottom:
        out.append("\nTokens that pushed the score down (towards closed): ")
        for token, score in sorted(bottom, key=lambda t: t[1])[:10]:
            out.append(f" {sanitize(token)} ", style="bold white on dark_green")
            out.append(f" {score:.2f}  ", style="dim")
    return out


def guidance_words(trace: TurnTrace) -> Text:
    if not trace.guidance_text:
        return Text("No guidance text was in force.", style="dim")
    out = Text(f"Guidance in force ({trace.guidance_mode}): ")
    out.append(f"“{sanitize(trace.guidance_text)}”", style="italic")
    return out


def steering_off(session: ChatSession) -> SafetyLevel:
    """The level with no steering and no guidance (the scale's first such notch)."""
    for level in session.levels.levels:
        if not level.steers and level.guidance == GuidanceMode.NONE:
            return level
    return SafetyLevel("Off")


class WhyRefusedScreen(ModalScreen[None]):
    """Explains one turn; can rerun it with steering off for a side-by-side comparison."""

    BINDINGS = [
        Binding("escape", "close", "Close", id="why.close"),
        Binding("o", "compare", "Compare with steering off", id="why.compare"),
        Binding("c", "copy", "Copy explanation", id="why.copy"),
    ]

    DEFAULT_CSS = """
    WhyRefusedScreen { align: center middle; }
    WhyRefusedScreen #box { width: 95%; height: 90%; border: round $error; padding: 0 1; }
    WhyRefusedScreen #explain > Static { margin-bottom: 1; }
    WhyRefusedScreen #explain { height: 1fr; }
    WhyRefusedScreen #compare { height: 1fr; display: none; }
    WhyRefusedScreen #compare.-shown { display: block; }
    WhyRefusedScreen #compare VerticalScroll { width: 1fr; border: round $primary 50%; }
    WhyRefusedScreen Button { margin: 0 0 1 0; }
    """

    class RerunToken(Message):
        def __init__(self, piece: str) -> None:
            super().__init__()
            self.piece = piece

    class RerunDone(Message):
        def __init__(self, trace: TurnTrace | None, error: str | None) -> None:
            super().__init__()
            self.trace = trace
            self.error = error

    def __init__(self, trace: TurnTrace, turn_index: int, session: ChatSession | None) -> None:
        super().__init__()
        self.trace = trace
        self.turn_index = turn_index
        self.session = session
        self.cancel = threading.Event()
        self.rerun_trace: TurnTrace | None = None
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        refused = self.trace.verdict is not None and self.trace.verdict.refused
        with Vertical(id="box") as box:
            box.border_title = "Why was this refused?" if refused else "Why was this not refused?"
            with VerticalScroll(id="explain"):
                yield Static(Text(verdict_text(self.trace)), id="why-verdict")
                yield Static(Text(steering_text(self.trace)), id="why-steering")
                yield Static(Text(gate_text(self.trace)), id="why-gate")
                yield Static(harm_tokens(self.trace), id="why-tokens")
                yield Static(guidance_words(self.trace), id="why-guidance")
                yield Button("Regenerate this turn with steering off (o)", id="why-compare", variant="warning")
            with Horizontal(id="compare"):
                with VerticalScroll(id="as-sent") as left:
                    left.border_title = f"As sent (level {escape(self.trace.level)})"
                    yield Markdown(sanitize(self.trace.reply), open_links=False)
                with VerticalScroll(id="steering-off") as right:
                    right.border_title = "Steering off"
                    yield Markdown("", id="off-reply", open_links=False)
        yield Footer()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "why-compare":
            self.action_compare()

    def action_compare(self) -> None:
        if self.session is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return
        self.query_one("#compare").add_class("-shown")
        self.query_one("#why-compare", Button).disabled = True
        level = steering_off(self.session)
        self.query_one("#steering-off").border_title = f"Steering off (level {escape(level.name)}) …"
        self._rerun(SafetySettings(level=level))

    @work(thread=True, exclusive=True, group="rerun")
    def _rerun(self, settings: SafetySettings) -> None:
        try:
            trace = self.session.rerun(
                self.turn_index, settings, lambda piece: self.post_message(self.RerunToken(piece)), self.cancel
            )
        except Exception as exc:  # shown to the user; the chat itself is unaffected
            self.post_message(self.RerunDone(None, str(exc) or type(exc).__name__))
        else:
            self.post_message(self.RerunDone(trace, None))

    async def on_why_refused_screen_rerun_token(self, message: RerunToken) -> None:
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one("#off-reply", Markdown))
        await self._stream.write(sanitize(message.piece))

    async def on_why_refused_screen_rerun_done(self, message: RerunDone) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        right = self.query_one("#steering-off")
        if message.error:
            right.border_title = "Steering off: failed"
            await self.query_one("#off-reply", Markdown).update(sanitize(f"Could not rerun: {message.error}"))
            return
        self.rerun_trace = message.trace
        await self.query_one("#off-reply", Markdown).update(sanitize(message.trace.reply))
        verdict = message.trace.verdict
        judged = "" if verdict is None else (" · judged refusal" if verdict.refused else " · judged answer")
        right.border_title = f"Steering off (level {escape(message.trace.level)}){judged}"

    def explanation(self) -> str:
        """The explanation as plain text (what Copy puts on the clipboard)."""
        parts = [verdict_text(self.trace), steering_text(self.trace), gate_text(self.trace),
                 harm_tokens(self.trace).plain, guidance_words(self.trace).plain]
        return "\n\n".join(str(p).strip() for p in parts if str(p).strip()) + "\n"

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.explanation())
        self.notify("Explanation copied.")

    def action_close(self) -> None:
        self.cancel.set()
        self.dismiss(None)
