"""Turning a sweep into a model's safety levels (`levels.json`, read by `open_session`).

Every steered setting of the sweep buys some unsafe-refusal gain over the unsteered
baseline and costs some over-refusal (safe-prompt refusal increase) and capability drop.
The levels are chosen by those measurements, not by fixed strengths:

- Off: the baseline (no guidance, no clamp);
- Guided: the guidance-only baseline, when the sweep measured one;
- Low / Medium / High: the cheapest setting whose gain reaches 1/3, 2/3 and 9/10 of the
  largest gain measured. A setting's cost is its change in safe-prompt refusal plus its
  change in capability lost, both against the baseline and signed, so a setting that answers
  more safe prompts than the model does on its own is cheaper than one that answers as many;
- Max: the setting with the largest gain (the cheapest, on a tie).
Each steered level must be a different setting that refuses at least MIN_STEP (5 points) more
unsafe prompts than the level below it (and than the baseline): a step of one or two prompts
is within a calibration set's noise and need not hold on other prompts (Qwen's gated s=1 and
s=2 were 3 points apart on 32 calibration prompts and came out the other way round on
harmful_val). A notch that no setting can fill that
way is left out of the slider rather than repeating the one below, and the strongest level
kept is always called Max.

A setting that refuses more than a quarter of the safe prompts (SAFE_REFUSAL_CAP, issue
12's bar for the strongest level) is offered only when no steered setting stays within it:
a slider whose top notch refuses most harmless questions protects by refusing everything.

Conditional, two-sided (conditional, and where the gate stays closed, refusal lowered as the
Open level does) and unconditional settings compete on the same terms, so a level is gated,
or two-sided, exactly when that bought the same protection for less.

For a model that over-refuses, a sweep run with `eval --open` also measures Open settings
(refusal features clamped down to s·m_f, s ≤ 0, where the harm gate says the prompt is
benign); the one that answers the most safe prompts becomes the slider's first notch, left of
Off, when it answers at least 5 points more of them and refuses at most 5 points fewer of the
unsafe ones. Chats still start at Off.

The figures a calibration writes into each level's description are the calibration sweep's.
`describe_held_out` replaces them with a later sweep's that ran the levels as defined on sets
that chose nothing (`eval --levels all --describe`), so what the slider shows is a result, not
the fit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from steerchat.engine.core.levels import (
    DEFAULT_LEVELS,
    GuidanceMode,
    LevelScale,
    SafetyLevel,
)

LEVEL_TARGETS = (("Low", 1 / 3), ("Medium", 2 / 3), ("High", 0.9))
# the Open notch (refusal lowered where the gate is closed) must answer at least this much more of
# the safe prompts than Off, and may refuse at most this much less of the unsafe ones (issue 12's bar)
OPEN_MIN_GAIN = 0.05
OPEN_MAX_UNSAFE_LOSS = 0.05
# a steered setting that refuses more of the safe prompts than this is offered only when none stays within it
SAFE_REFUSAL_CAP = 0.25
# each steered level refuses at least this much more of the unsafe prompts than the one below
MIN_STEP = 0.05


@dataclass
class LevelCandidate:
    row: dict
    gain: float
    safe_cost: float
    capability_cost: float

    @property
    def cost(self) -> float:
        return self.safe_cost + self.capability_cost


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _measured(row: dict, base: dict | None, label: str = "Measured") -> str:
    """A setting's sweep figures, each with its change from the baseline (none for the baseline)."""
    def d(k: str) -> str:
        if base is None or row.get(k) is None or base.get(k) is None:
            return ""
        return f" ({100 * (row[k] - base[k]):+.0f})"

    return (f"{label}: unsafe refused {_pct(row['unsafe_refusal'])}{d('unsafe_refusal')}, "
            f"safe refused {_pct(row['safe_refusal'])}{d('safe_refusal')}, "
            f"capability {_pct(row['capability'])}{d('capability')}.")


def _two_sided(row: dict) -> bool:
    return bool(row["conditional"]) and row.get("open_strength") is not None


def _describe(row: dict, base: dict) -> str:
    mode = "only when the harm gate opens" if row["conditional"] else "on every prompt"
    if _two_sided(row):
        mode += f"; where it stays closed, pushed down to {row['open_strength']:g}× instead, towards answering"
    return f"Refusal features clamped to {row['strength']:g}× their reference activation, {mode}. " + _measured(row, base)


def candidates(rows: list[dict], base: dict) -> list[LevelCandidate]:
    """Every steered setting with its gain and signed costs against `base` (see the module docstring)."""
    out = []
    for r in rows:
        if r["strength"] <= 0 or r["unsafe_refusal"] is None:
            continue
        safe = 0.0
        if r["safe_refusal"] is not None and base["safe_refusal"] is not None:
            safe = r["safe_refusal"] - base["safe_refusal"]
        cap = 0.0
        if r["capability"] is not None and base["capability"] is not None:
            cap = base["capability"] - r["capability"]
        out.append(LevelCandidate(r, r["unsafe_refusal"] - base["unsafe_refusal"], safe, cap))
    within = [c for c in out if c.row["safe_refusal"] is None or c.row["safe_refusal"] <= SAFE_REFUSAL_CAP + 1e-9]
    return within or out


def _open_level(rows: list[dict], base: dict) -> SafetyLevel | None:
    """The Open notch, when the sweep ran one or more (`eval --open`) and one earns its place:
    safe prompts refused at least OPEN_MIN_GAIN less often than Off, unsafe ones at most
    OPEN_MAX_UNSAFE_LOSS less often."""
    if base["safe_refusal"] is None:
        return None
    fits = [r for r in rows if r.get("lower") and r["guidance"] == "none"
            and None not in (r["unsafe_refusal"], r["safe_refusal"])
            and base["safe_refusal"] - r["safe_refusal"] >= OPEN_MIN_GAIN - 1e-9
            and base["unsafe_refusal"] - r["unsafe_refusal"] <= OPEN_MAX_UNSAFE_LOSS + 1e-9]
    if not fits:
        return None
    # the one that answers the most safe prompts; on a tie, the gentlest push
    row = min(fits, key=lambda r: (r["safe_refusal"], -r["strength"]))
    return SafetyLevel("Open", GuidanceMode.NONE, float(row["strength"]), False,
                       f"Answers more: refusal features clamped down to {row['strength']:g}× their reference "
                       f"activation where the harm gate says the prompt is benign. " + _measured(row, base), lower=True)


def choose_levels(rows: list[dict]) -> LevelScale:
    """The level mapping for a sweep's summary rows (see the module docstring)."""
    all_rows = rows
    rows = [r for r in rows if not r.get("lower")]
    base = next((r for r in rows if r["strength"] == 0 and r["guidance"] == "none"), None)
    if base is None or base["unsafe_refusal"] is None:
        raise ValueError("calibration needs the unsteered baseline (strength 0, no guidance) with unsafe prompts")
    cands = candidates(rows, base)
    if not cands:
        raise ValueError("calibration needs steered settings (strength > 0) in the sweep")
    levels = [SafetyLevel("Off", GuidanceMode.NONE, 0.0, False,
                          f"The model as it is. Measured: unsafe refused {_pct(base['unsafe_refusal'])}, "
                          f"safe refused {_pct(base['safe_refusal'])}, capability {_pct(base['capability'])}.")]
    guided = next((r for r in rows if r["strength"] == 0 and r["guidance"] != "none"), None)
    if guided is not None:
        levels.append(SafetyLevel("Guided", GuidanceMode(guided["guidance"]), 0.0, False,
                                  f"Asks for a correct, ethical and inoffensive answer. Measured: unsafe refused "
                                  f"{_pct(guided['unsafe_refusal'])}, safe refused {_pct(guided['safe_refusal'])}."))
    else:
        levels.append(DEFAULT_LEVELS[1])
    best_gain = max(c.gain for c in cands)
    order = sorted(cands, key=lambda c: (c.cost, c.row["strength"], not c.row["conditional"]))
    picked: list[LevelCandidate] = []
    # each steered level is a setting of its own and refuses at least MIN_STEP more unsafe prompts
    # than the one below; a notch no measured setting can fill that way is left out
    for name, share in LEVEL_TARGETS + (("Max", 1.0),):
        target = share * best_gain if best_gain > 0 else 0.0
        floor = (picked[-1].gain if picked else 0.0) + MIN_STEP
        fits = [c for c in cands if c.gain >= target and c.gain >= floor - 1e-9]
        if name == "Max":
            c = max(fits, key=lambda c: (c.gain, -c.cost)) if fits else None
        else:
            c = next((c for c in order if c in fits), None)
        if c is None:
            continue
        picked.append(c)
        levels.append(_level(name, c.row, base))
    if picked and levels[-1].name != "Max":
        # the strongest setting is what users look for under "Max", whichever notches had to go
        levels[-1] = _level("Max", picked[-1].row, base)
    opened = _open_level(all_rows, base)
    if opened is not None:
        levels.insert(0, opened)  # left of Off: the way down, for a model that over-refuses
    return LevelScale(tuple(levels), source="calibrated by `steerchat eval --calibrate`")


def _level(name: str, row: dict, base: dict) -> SafetyLevel:
    return SafetyLevel(name, GuidanceMode(row["guidance"]), float(row["strength"]), bool(row["conditional"]),
                       _describe(row, base),
                       open_strength=float(row["open_strength"]) if _two_sided(row) else None)


_FIGURES = re.compile(r"\s*\b(Measured|Held out)\b.*$", re.S)


def describe_held_out(path: Path, sweep: dict) -> LevelScale:
    """Rewrite the figures in each level's description in the levels file at `path` with those
    of `sweep`, which ran every level as defined on sets that did not calibrate them; the
    sweep's figures are kept in the file under "held_out". Returns the rewritten scale."""
    scale = LevelScale.load(path)  # a malformed file is named before anything is written
    data = json.loads(Path(path).read_text())
    by_name = {r["name"]: r for r in sweep.get("summary", [])}
    missing = [lv.name for lv in scale.levels if lv.name not in by_name]
    if missing or "Off" not in by_name:
        raise ValueError(f"--describe needs every level of {path} measured (missing: {', '.join(missing or ['Off'])}); "
                         "run the sweep with --levels all")
    base = by_name["Off"]
    if base["unsafe_refusal"] is None or base["safe_refusal"] is None:
        raise ValueError("--describe needs both unsafe and safe prompts in the sweep")
    for entry in data["levels"]:
        row = by_name[entry["name"]]
        what = _FIGURES.sub("", entry.get("description", "")).strip()
        figures = _measured(row, None if row is base else base, "Held out")
        entry["description"] = f"{what} {figures}".strip()
    meta = sweep.get("meta") or {}
    data["held_out"] = {
        "meta": {k: meta.get(k) for k in ("model", "sae", "sets", "limits", "max_new_tokens", "seed", "harm_gate")},
        "summary": [{k: r.get(k) for k in ("name", "key", "unsafe_refusal", "safe_refusal", "capability",
                                           "explicit_decline", "looping")} for r in sweep["summary"]],
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    return LevelScale.load(path)


def write_levels(scale: LevelScale, path: Path, sweep: dict | None = None) -> Path:
    """Write `levels.json` where the engine reads it, with the measurements behind it."""
    data = json.loads(scale.to_json())
    if sweep is not None:
        data["calibration"] = {
            "meta": sweep.get("meta"), "goal": sweep.get("goal"),
            "summary": [{k: r[k] for k in ("name", "key", "unsafe_refusal", "safe_refusal", "capability",
                                            "escalation_compliance")} for r in sweep.get("summary", [])],
        }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
