"""`steerchat ask` end to end on a tiny local model, and its errors."""

from __future__ import annotations

import json

from steerchat.engine.runtime.sae import SAE
from steerchat.engine.core.featureset import FeatureSet, RefusalFeature
from steerchat.cli.main import main


def test_ask_json_prints_a_full_trace(tiny_model_dir, tmp_path, capsys):
    sae = SAE.random(d_in=64, d_sae=128, k=8, hook_layer=1, seed=0)
    sae.save(tmp_path / "sae")
    FeatureSet(refusal_features=[RefusalFeature(2, 1.5)], labels={2: "test label"}).save(tmp_path / "sae")
    rc = main(["ask", "hello [red]there[/]", "--model", str(tiny_model_dir), "--sae", str(tmp_path / "sae"),
               "--level", "Max", "--json", "--max-tokens", "6"])
    assert rc == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["prompt"] == "hello [red]there[/]"
    assert trace["level"] == "Max" and trace["strength"] == 3.0
    assert trace["refusal_features"][0]["feature"] == 2
    assert trace["refusal_features"][0]["target"] == 4.5
    assert trace["refusal_features"][0]["label"] == "test label"
    assert trace["timings"]["reply_tokens"] == 6
    assert trace["tokens"] and trace["verdict"] is not None


def test_ask_streams_plain_text(tiny_model_dir, capsys):
    assert main(["ask", "hi", "--model", str(tiny_model_dir), "--sae", "none", "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_ask_errors_are_one_line(tiny_model_dir, capsys):
    assert main(["ask", "hi", "--model", "definitely not a model"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("steerchat: ") and "Traceback" not in err
    assert main(["ask", "hi", "--model", str(tiny_model_dir), "--level", "Extreme", "--sae", "none"]) == 1
    assert "unknown safety level 'Extreme'" in capsys.readouterr().err
    assert main(["ask", "hi", "--model", str(tiny_model_dir), "--sae", str(tiny_model_dir)]) == 1
    assert "cfg.json: missing" in capsys.readouterr().err


def test_ask_no_loop_guard_flag(monkeypatch, tmp_path, capsys):
    import steerchat.engine.runtime.session as session_module
    from tests.tui.fake_engine import FakeEngine

    monkeypatch.setenv("STEERCHAT_HOME", str(tmp_path / "home"))
    engine = FakeEngine()
    looping = "Sure. " + "I like it. " * 20

    def open_session(*args, **kw):
        kw.pop("device", None), kw.pop("dtype", None)
        session = engine.open_session(*args, **kw)
        session.replies["tell me"] = looping
        return session

    monkeypatch.setattr(session_module, "open_session", open_session)
    assert main(["ask", "tell me", "--json"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert engine.sessions[-1].sampling.loop_guard is True
    assert trace["loop_stopped"] is True and trace["reply"] == "Sure. " + "I like it. " * 7 + "I like it."
    assert main(["ask", "tell me", "--json", "--no-loop-guard"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert engine.sessions[-1].sampling.loop_guard is False
    assert trace["loop_stopped"] is False and trace["reply"] == looping
    assert "--no-loop-guard" in main_help(capsys)


def main_help(capsys) -> str:
    import pytest

    with pytest.raises(SystemExit):
        main(["ask", "--help"])
    return capsys.readouterr().out
