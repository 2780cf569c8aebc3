"""The features panel: what the SAE saw on the selected turn, like a tiny Neuronpedia.

Prompt and reply features as bars (peak and mean activation, count), the refusal
features' natural activation against the clamp target, and a heat map of the tokens a
chosen feature fired on.
"""

from __future__ import annotations

from rich.color import Color
from rich.style import Style
from rich.text import Text
from steerchat.engine.core.trace import FeatureStat, RefusalFeatureState, TurnTrace
from steerchat.tui.sanitize import sanitize
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, OptionList, Sparkline, Static
from textual.widgets.option_list import Option

BAR_WIDTH = 10
NAME_WIDTH = 22
REFUSAL_ROWS = 8  # refusal features shown in the panel; the rest are counted
_BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(value: float, scale: float, width: int = BAR_WIDTH) -> str:
    """A left-aligned bar of `width` cells for `value` on [0, scale], with eighth-cell steps."""
    if scale <= 0 or value <= 0:
        return " " * width
    eighths = round(min(value / scale, 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_BLOCKS[part] if part else "")).ljust(width)


def feature_name(feature: int, label: str | None) -> str:
    return f"#{feature} {sanitize(label)}" if label else f"#{feature}"


def _fit(name: str, width: int = NAME_WIDTH) -> str:
    return (name if len(name) <= width else name[: width - 1] + "…").ljust(width)


def feature_table(title: str, stats: list[FeatureStat], highlight: set[int], limit: int = 8) -> Text:
    """Rows of `label  peak-bar peak  mean-bar mean  count`, strongest first."""
    out = Text(f"{title:<33}peak{'':>8}mean   n\n", style="bold")
    if not stats:
        out.append("  none fired", style="dim")
        return out
    stats = sorted(stats, key=lambda s: s.max, reverse=True)[:limit]
    scale = max(s.max for s in stats)
    for s in stats:
        style = "bold red" if s.feature in highlight else ""
        out.append(f" {_fit(feature_name(s.feature, s.label))} ", style=style)
        out.append(bar(s.max, scale), style="green")
        out.append(f"{s.max:5.1f} ")
        out.append(bar(s.mean, scale, BAR_WIDTH // 2), style="cyan")
        out.append(f"{s.mean:5.1f} ")
        out.append(f"{s.count:>3}\n", style="dim")
    out.rstrip()
    return out


def natural_activation(st: RefusalFeatureState) -> float:
    return max(st.natural_reply_max, st.natural_prompt_max)


def rank_refusal_states(states: list[RefusalFeatureState], lowered: bool = False) -> list[RefusalFeatureState]:
    """Clamped features by how far steering moved them (up, or for a lowering clamp down);
    unclamped ones by how active they were on their own against their reference. Most
    telling first."""
    if any(st.target is not None for st in states):
        sign = -1.0 if lowered else 1.0
        return sorted(states, key=lambda st: sign * ((st.target or 0.0) - natural_activation(st)), reverse=True)
    return sorted(states, key=lambda st: natural_activation(st) / max(st.reference_activation, 1e-6), reverse=True)


def refusal_table(states: list[RefusalFeatureState], rows: int = REFUSAL_ROWS, lowered: bool = False) -> Text:
    """Each refusal feature: natural reply activation as a bar, the clamp target as ▼ (for a
    lowering clamp, a cap: features above it are pushed down to it, the rest left alone).
    With more than `rows` features, the most telling `rows` (see rank_refusal_states)."""
    out = Text("Refusal features: natural activation vs clamp target\n", style="bold")
    if not states:
        out.append("  this model has no refusal features", style="dim")
        return out
    width = BAR_WIDTH * 3
    shown = states if len(states) <= rows else rank_refusal_states(states, lowered)[:rows]
    for st in shown:
        scale = max(st.reference_activation, st.target or 0.0, st.natural_reply_max, 1e-6) * 1.1
        cells = list(bar(st.natural_reply_max, scale, width))
        ref_at = min(width - 1, int(st.reference_activation / scale * width))
        if cells[ref_at] == " ":
            cells[ref_at] = "┊"
        if st.target is not None:
            cells[max(0, min(width - 1, int(st.target / scale * width)))] = "▼"  # an Open level clamps below 0
        out.append(f" {_fit(feature_name(st.feature, st.label))} ", style="bold red")
        out.append("".join(cells) + "\n", style="red")
        out.append(f"   natural {st.natural_reply_max:.1f} (prompt {st.natural_prompt_max:.1f}) · ")
        if st.target is None:
            out.append("not clamped", style="dim")
        else:
            out.append(f"capped at {st.target:.1f}" if lowered else f"clamped to {st.target:.1f}", style="bold")
        out.append(f" · ref {st.reference_activation:.1f}\n", style="dim")
    if len(states) > len(shown):
        moved = "moved least by steering" if any(st.target is not None for st in states) else "least active"
        out.append(f" … and {len(states) - len(shown)} more refusal features ({moved})\n", style="dim")
    out.append(" █ natural  ▼ clamp target  ┊ reference m_f (s=1)", style="dim")
    return out


def heat_map(trace: TurnTrace, feature: int) -> Text:
    """The turn's tokens with a background as hot as `feature`'s activation on each."""
    heat = trace.feature_heat(feature)
    peak = max((a for _, _, a in heat), default=0.0)
    out = Text()
    span = None
    for token, where, act in heat:
        if where != span:
            out.append(("\n\n" if span else "") + ("Prompt: " if where == "prompt" else "Reply:  "), style="bold")
            span = where
        strength = act / peak if peak > 0 else 0.0
        if strength > 0:
            bg = Color.from_rgb(40 + 215 * strength, 40 + 90 * strength, 40)
            out.append(sanitize(token), style=Style(bgcolor=bg, color="white" if strength < 0.6 else "black"))
        else:
            out.append(sanitize(token), style="dim")
    out.append(f"\n\npeak {peak:.1f}", style="dim")
    return out


def turn_summary(trace: TurnTrace) -> Text:
    out = Text()
    out.append(f"Level {trace.level}", style="bold magenta")
    out.append(f"  s={trace.strength:g}  guidance {trace.guidance_mode}")
    if trace.conditional:
        open_s = trace.open_strength
        out.append("  conditional" if open_s is None else f"  conditional, two-sided (closed: {open_s:g})")
    if trace.gate is not None:
        out.append(f"\nGate {trace.gate.score:.2f} / {trace.gate.threshold:.2f} ")
        out.append("open" if trace.gate.open else "closed", style="bold red" if trace.gate.open else "green")
        if not trace.gate.open and trace.gate.benign is False:
            out.append(f" (not benign: ≥ {trace.gate.benign_threshold:.2f})", style="yellow")
    if trace.sae is None:
        out.append("\nNo SAE loaded: no features to show, and the slider changes only the guidance.", style="yellow")
    if trace.verdict is not None:
        out.append("\nJudge ")
        out.append(
            "refusal" if trace.verdict.refused else "answer",
            style="bold red" if trace.verdict.refused else "bold green",
        )
        out.append(f" (score {trace.verdict.score:.2f})")
    return out


def turn_activation(trace: TurnTrace | None, feature: int) -> float:
    """`feature`'s peak activation on one turn (prompt or reply; 0 when it did not fire)."""
    if trace is None:
        return 0.0
    peaks = [s.max for s in (*trace.prompt_features, *trace.reply_features) if s.feature == feature]
    peaks += [a for t in trace.tokens for f, a in t.features if f == feature]
    return max(peaks, default=0.0)


def matches(query: str, feature: int, label: str | None) -> bool:
    """Whether a feature is found by `query`: every word in its label, or its number."""
    words = query.lower().replace("#", " ").split()
    text = f"{feature} {label or ''}".lower()
    return all(w in text for w in words)


class FeaturesPanel(VerticalScroll):
    """Side panel for the selected turn. `/` finds a feature by label, `p` pins the highlighted
    one: its activation on every turn of the chat is drawn as a sparkline."""

    BINDINGS = [
        Binding("slash", "find", "Find feature", id="features.find"),
        Binding("p", "pin", "Pin feature", id="features.pin"),
    ]

    DEFAULT_CSS = """
    FeaturesPanel { width: 64; border-left: solid $primary 40%; padding: 0 1; }
    FeaturesPanel > Static { margin-bottom: 1; }
    FeaturesPanel OptionList { height: auto; max-height: 8; margin-bottom: 1; }
    FeaturesPanel #fp-search { display: none; }
    FeaturesPanel #fp-search.-shown { display: block; }
    FeaturesPanel #fp-spark { height: 3; margin-bottom: 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.trace: TurnTrace | None = None
        self.feature: int | None = None
        self.pinned: int | None = None
        self.pinned_label: str | None = None
        self.history: list[TurnTrace | None] = []  # every turn on screen, for the pinned sparkline

    def compose(self) -> ComposeResult:
        yield Static(Text("Select a reply to see its features.", style="dim"), id="fp-summary")
        yield Static("", id="fp-prompt")
        yield Static("", id="fp-reply")
        yield Static("", id="fp-refusal")
        yield Input(placeholder="Find a feature by label or number", id="fp-search")
        yield OptionList(id="fp-choose")
        yield Static("", id="fp-heat")
        yield Static("", id="fp-pinned")
        spark = Sparkline([], id="fp-spark")
        spark.display = False
        yield spark

    def set_history(self, traces: list[TurnTrace | None]) -> None:
        """The traces of every turn on screen, oldest first (for the pinned feature's sparkline)."""
        self.history = list(traces)
        self._draw_pinned()

    def _draw_pinned(self) -> None:
        spark, note = self.query_one("#fp-spark", Sparkline), self.query_one("#fp-pinned", Static)
        if self.pinned is None:
            spark.display = False
            note.update("")
            return
        values = [turn_activation(t, self.pinned) for t in self.history] or [0.0]
        spark.data = values
        spark.display = True
        note.update(Text(f"Pinned {feature_name(self.pinned, self.pinned_label)}: peak per turn "
                         f"(last {values[-1]:.1f}, max {max(values):.1f}) · p unpins", style="bold"))

    def action_find(self) -> None:
        search = self.query_one("#fp-search", Input)
        search.add_class("-shown")
        search.focus()

    def action_pin(self) -> None:
        """Pin the highlighted feature (or unpin it when it is pinned already)."""
        feature = self.feature
        if feature is None or feature == self.pinned:
            self.pinned, self.pinned_label = None, None
        else:
            self.pinned = feature
            self.pinned_label = self._labels().get(feature)
        self._draw_pinned()

    def _labels(self) -> dict[int, str | None]:
        seen: dict[int, str | None] = {}
        if self.trace is not None:
            for st in [*self.trace.refusal_features, *self.trace.prompt_features, *self.trace.reply_features]:
                seen.setdefault(st.feature, st.label)
        return seen

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "fp-search":
            event.stop()
            self._fill_choices()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "fp-search":
            event.stop()
            self.query_one("#fp-choose", OptionList).focus()

    def _fill_choices(self) -> int | None:
        """List the features of the turn that match the search; return the first."""
        choose = self.query_one("#fp-choose", OptionList)
        choose.clear_options()
        query = self.query_one("#fp-search", Input).value
        seen = {f: label for f, label in self._labels().items() if matches(query, f, label)}
        choose.add_options(
            [Option(Text(f"heat map: {feature_name(f, label)}"), id=str(f)) for f, label in seen.items()]
        )
        choose.display = bool(seen) or bool(query)
        first = next(iter(seen), None)
        if first is not None:
            choose.highlighted = 0
        return first

    def show(self, trace: TurnTrace | None, note: str | None = None) -> None:
        """Render `trace` (None shows `note` instead, e.g. for an interrupted reply)."""
        self.trace = trace
        self.border_title = "Features"
        if trace is None:
            self.query_one("#fp-summary", Static).update(Text(note or "No trace for this turn.", style="dim"))
            for wid in ("#fp-prompt", "#fp-reply", "#fp-refusal", "#fp-heat"):
                self.query_one(wid, Static).update("")
            self.query_one("#fp-choose", OptionList).clear_options()
            return
        refusal_ids = {s.feature for s in trace.refusal_features}
        self.query_one("#fp-summary", Static).update(turn_summary(trace))
        self.query_one("#fp-prompt", Static).update(feature_table("Prompt features", trace.prompt_features, refusal_ids))
        self.query_one("#fp-reply", Static).update(feature_table("Reply features", trace.reply_features, refusal_ids))
        self.query_one("#fp-refusal", Static).update(refusal_table(trace.refusal_features, lowered=trace.lowered))
        self.choose_feature(self._fill_choices())

    def choose_feature(self, feature: int | None) -> None:
        """Show the heat map of `feature` over the turn's tokens."""
        self.feature = feature
        heat = self.query_one("#fp-heat", Static)
        if self.trace is None or feature is None:
            heat.update("")
            return
        title = Text(f"Tokens #{feature} fired on\n", style="bold")
        heat.update(title + heat_map(self.trace, feature))

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if event.option.id is not None:
            self.choose_feature(int(event.option.id))
