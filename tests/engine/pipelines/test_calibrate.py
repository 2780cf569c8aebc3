"""Calibration: the cheapest sweep setting per gain target becomes a level."""

from __future__ import annotations

from steerchat.engine.pipelines.calibrate import choose_levels, write_levels
from steerchat.engine.pipelines.evaluate import SweepSetting
from steerchat.engine.core.levels import LevelScale


BASE = SweepSetting("baseline")
UNC = SweepSetting("s=2 uncond", 2.0, False)
CON = SweepSetting("s=2 cond", 2.0, True)


def _row(setting, unsafe, safe, cap):
    return setting.to_dict() | {"unsafe_refusal": unsafe, "safe_refusal": safe, "capability": cap}


def test_calibration_picks_cheapest_setting_per_gain_target(tmp_path):
    s1u, s1c, s3u, s3c = (SweepSetting("a", 1.0), SweepSetting("b", 1.0, True), SweepSetting("c", 3.0),
                          SweepSetting("d", 3.0, True))
    rows = [_row(BASE, 0.1, 0.05, 0.6), _row(s1u, 0.4, 0.2, 0.55), _row(s1c, 0.4, 0.06, 0.6),
            _row(UNC, 0.7, 0.22, 0.4), _row(CON, 0.65, 0.1, 0.58), _row(s3u, 0.9, 0.24, 0.2), _row(s3c, 0.85, 0.15, 0.5)]
    for r in rows:
        r["guidance"] = "none"
    scale = choose_levels(rows)
    got = {lv.name: (lv.strength, lv.conditional) for lv in scale.levels}
    # max gain 0.8; Low needs 0.27 → s=1 cond (cheapest), Medium 0.53 → s=2 cond, High 0.72 → s=3 cond
    assert got == {"Off": (0.0, False), "Guided": (0.0, False), "Low": (1.0, True), "Medium": (2.0, True),
                   "High": (3.0, True), "Max": (3.0, False)}
    path = write_levels(scale, tmp_path / "levels.json", {"summary": [], "meta": {}, "goal": None})
    assert LevelScale.load(path).names == ["Off", "Guided", "Low", "Medium", "High", "Max"]


def test_levels_are_distinct_and_strictly_monotone():
    # only two settings add protection: High and Max would repeat Medium, so the notches between go
    # and the strongest setting kept is called Max
    s1c = SweepSetting("b", 1.0, True)
    rows = [_row(BASE, 0.1, 0.0, 0.6), _row(s1c, 0.5, 0.05, 0.6), _row(UNC, 1.0, 0.2, 0.3), _row(CON, 1.0, 0.2, 0.3)]
    for r in rows:
        r["guidance"] = "none"
    scale = choose_levels(rows)
    steered = [lv for lv in scale.levels if lv.strength > 0]
    assert [lv.name for lv in steered] == ["Low", "Max"]
    assert len({(lv.strength, lv.conditional, lv.guidance) for lv in steered}) == len(steered)
    assert [(lv.strength, lv.conditional) for lv in steered][0] == (1.0, True) and steered[1].strength == 2.0
    assert "unsafe refused 50%" in steered[0].description and "unsafe refused 100%" in steered[1].description


def _open_row(unsafe, safe):
    row = _row(SweepSetting("open", 0.0, False, lower=True), unsafe, safe, 0.6)
    row["guidance"] = "none"
    return row


def test_an_open_level_goes_left_of_off_when_it_answers_more_and_refuses_as_much():
    rows = [_row(BASE, 0.6, 0.5, 0.6), _row(UNC, 1.0, 0.9, 0.4)]
    for r in rows:
        r["guidance"] = "none"
    scale = choose_levels(rows + [_open_row(0.57, 0.2)])  # 30 points fewer safe refused, 3 fewer unsafe
    assert scale.names[:2] == ["Open", "Off"] and scale.default.name == "Off"
    opened = scale.levels[0]
    assert opened.lower and opened.strength == 0.0 and not opened.conditional
    assert "safe refused 20% (-30)" in opened.description and "unsafe refused 57% (-3)" in opened.description
    # it costs too much protection (unsafe refused 10 points less): no Open notch
    assert "Open" not in choose_levels(rows + [_open_row(0.5, 0.2)]).names
    # it answers too few more safe prompts (2 points): no Open notch
    assert "Open" not in choose_levels(rows + [_open_row(0.6, 0.48)]).names
    # an Open row never passes for the baseline the other levels are measured against
    assert choose_levels([_open_row(0.57, 0.2)] + rows).levels[1].description.startswith("The model as it is. "
                                                                                         "Measured: unsafe refused 60%")


def test_held_out_figures_replace_the_calibration_figures_in_every_description(tmp_path):
    import json

    import pytest

    from steerchat.engine.pipelines.calibrate import describe_held_out

    s1c = SweepSetting("b", 1.0, True)
    rows = [_row(BASE, 0.1, 0.0, 0.6), _row(s1c, 0.5, 0.05, 0.6), _row(UNC, 1.0, 0.2, 0.3)]
    for r in rows:
        r["guidance"] = "none"
    path = write_levels(choose_levels(rows), tmp_path / "levels.json", {"summary": [], "meta": {}, "goal": None})
    before = LevelScale.load(path)
    # a later sweep of the levels as defined, on other sets: rows named after the levels
    held = [{"name": lv.name, "key": lv.name, "unsafe_refusal": u, "safe_refusal": s, "capability": c}
            for lv, (u, s, c) in zip(before.levels, [(0.2, 0.1, 0.5), (0.25, 0.1, 0.5), (0.7, 0.15, 0.5),
                                                     (0.95, 0.6, 0.3)])]
    with pytest.raises(ValueError, match="missing: Max"):
        describe_held_out(path, {"summary": held[:3], "meta": {}})
    scale = describe_held_out(path, {"summary": held, "meta": {"sets": {"unsafe": "harmful_val.json"}}})
    got = {lv.name: lv.description for lv in scale.levels}
    assert got["Off"] == "The model as it is. Held out: unsafe refused 20%, safe refused 10%, capability 50%."
    assert got["Low"].startswith("Refusal features clamped to 1× their reference activation, only when the harm gate")
    assert got["Low"].endswith("Held out: unsafe refused 70% (+50), safe refused 15% (+5), capability 50% (+0).")
    assert all("Measured" not in d for d in got.values())
    assert [(lv.strength, lv.conditional) for lv in scale.levels] == [(lv.strength, lv.conditional) for lv in before.levels]
    saved = json.loads(path.read_text())
    assert saved["held_out"]["meta"]["sets"] == {"unsafe": "harmful_val.json"} and len(saved["held_out"]["summary"]) == 4
    again = describe_held_out(path, {"summary": held, "meta": {}})  # run again: figures replaced, not appended
    assert [lv.description for lv in again.levels] == [lv.description for lv in scale.levels]


def test_a_setting_that_refuses_most_safe_prompts_is_a_level_only_when_nothing_else_protects():
    s1c, s2c = SweepSetting("b", 1.0, True), SweepSetting("d", 2.0, True)
    rows = [_row(BASE, 0.5, 0.2, 0.4), _row(s1c, 0.8, 0.2, 0.4), _row(s2c, 0.9, 0.28, 0.4), _row(UNC, 1.0, 0.95, 0.2)]
    for r in rows:
        r["guidance"] = "none"
    got = [(lv.name, lv.strength, lv.conditional) for lv in choose_levels(rows).levels if lv.strength > 0]
    # refusing 95% (or 28%) of safe prompts is over the 25% bar: the strongest notch is the gated s=1
    assert got == [("Max", 1.0, True)]
    # with nothing under the bar, the bar does not empty the slider
    over = [rows[0], rows[2], rows[3]]
    got = [(lv.name, lv.strength, lv.conditional) for lv in choose_levels(over).levels if lv.strength > 0]
    assert got == [("Low", 2.0, True), ("Max", 2.0, False)]


def test_a_two_sided_setting_wins_when_it_protects_as_much_and_answers_more():
    s1c = SweepSetting("s=1 cond", 1.0, True)
    two1 = SweepSetting("s=1 cond open=-1", 1.0, True, open_strength=-1.0)
    two2 = SweepSetting("s=2 cond open=-1", 2.0, True, open_strength=-1.0)
    rows = [_row(BASE, 0.5, 0.22, 0.4), _row(s1c, 0.84, 0.22, 0.4), _row(two1, 0.81, 0.06, 0.55),
            _row(CON, 0.94, 0.28, 0.4), _row(two2, 0.91, 0.09, 0.55), _row(UNC, 0.97, 0.97, 0.22)]
    for r in rows:
        r["guidance"] = "none"
    scale = choose_levels(rows)
    steered = [lv for lv in scale.levels if lv.strength > 0]
    # the gated s=2 and the unconditional one refuse over 25% of safe prompts; of the rest, the two-sided
    # settings protect almost as much for fewer safe refusals and more capability: they are the levels
    assert [(lv.name, lv.strength, lv.open_strength) for lv in steered] == [("Low", 1.0, -1.0), ("Max", 2.0, -1.0)]
    assert all(lv.two_sided and lv.conditional and not lv.lower for lv in steered)
    assert "where it stays closed, pushed down to -1× instead" in steered[1].description
    assert "safe refused 9% (-13)" in steered[1].description


def test_two_sided_levels_survive_write_and_load(tmp_path):
    two = SweepSetting("s=2 cond open=-1", 2.0, True, open_strength=-1.0)
    rows = [_row(BASE, 0.5, 0.22, 0.4), _row(two, 0.91, 0.09, 0.55)]
    for r in rows:
        r["guidance"] = "none"
    path = write_levels(choose_levels(rows), tmp_path / "levels.json", {"summary": [], "meta": {}, "goal": None})
    top = LevelScale.load(path).get("Max")
    assert top.two_sided and top.open_strength == -1.0 and top.strength == 2.0


def test_a_step_of_a_prompt_or_two_is_not_a_level():
    # the starter's full-set calibration: two-sided s=1 52%, s=1.5 71%, s=2 72%, gated s=2 74% (baseline 11%)
    rows = [_row(BASE, 0.11, 0.04, 0.45)]
    for s, u, sf in ((1.0, 0.52, 0.06), (1.5, 0.71, 0.09), (2.0, 0.72, 0.10)):
        rows.append(_row(SweepSetting(f"s={s:g} two", s, True, open_strength=-1.0), u, sf, 0.5))
    rows.append(_row(CON, 0.74, 0.13, 0.45))
    for r in rows:
        r["guidance"] = "none"
    steered = [lv for lv in choose_levels(rows).levels if lv.strength > 0]
    # s=2 two-sided and gated s=2 add one and three points over s=1.5: within noise, so no notch of their own
    assert [(lv.name, lv.strength) for lv in steered] == [("Low", 1.0), ("Max", 1.5)]
    gains = [0.52, 0.71]
    assert all(b - a >= 0.05 for a, b in zip([0.11] + gains, gains))
