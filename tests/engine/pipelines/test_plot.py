"""The sweep plot."""

from __future__ import annotations

import pytest

from steerchat.engine.pipelines.evaluate import SweepSetting


BASE = SweepSetting("baseline")
UNC = SweepSetting("s=2 uncond", 2.0, False)
CON = SweepSetting("s=2 cond", 2.0, True)


def _row(setting, unsafe, safe, cap):
    return setting.to_dict() | {"unsafe_refusal": unsafe, "safe_refusal": safe, "capability": cap}


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from steerchat.engine.pipelines.plot import plot_sweep

    rows = [_row(BASE, 0.1, 0.0, 0.5), _row(UNC, 0.8, 0.5, 0.3), _row(CON, 0.7, 0.1, 0.5)]
    for r in rows:
        r["escalation_compliance"] = 0.5
    path = plot_sweep(rows, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
