"""The thread count a turn gets: the idle cores when it starts, unless fixed."""

import torch

from steerchat.engine.runtime import threads


def _cores(monkeypatch, percents):
    import psutil

    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: list(percents))


def test_busy_cores_are_left_out(monkeypatch):
    monkeypatch.delenv("STEERCHAT_THREADS", raising=False)
    _cores(monkeypatch, [3.0, 97.0])
    assert threads.idle_cores() == 1
    _cores(monkeypatch, [3.0, 10.0, 49.9, 50.0])
    assert threads.idle_cores() == 3
    _cores(monkeypatch, [100.0, 100.0])
    assert threads.idle_cores() == 1  # never none


def test_a_fixed_count_and_the_environment_win(monkeypatch):
    _cores(monkeypatch, [0.0, 0.0, 0.0, 0.0])
    monkeypatch.delenv("STEERCHAT_THREADS", raising=False)
    assert threads.choose_threads() == 4
    assert threads.choose_threads(3) == 3
    monkeypatch.setenv("STEERCHAT_THREADS", "2")
    assert threads.choose_threads() == 2
    monkeypatch.setenv("STEERCHAT_THREADS", "many")  # not a count: ignored
    assert threads.choose_threads() == 4


def test_apply_sets_torch_and_a_turn_records_it(monkeypatch, tiny, sae):
    from steerchat.engine.core.api import SamplingSettings
    from steerchat.engine.core.featureset import FeatureSet
    from steerchat.engine.runtime.session import Session
    from steerchat.engine.runtime.steered import SteeredModel

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("STEERCHAT_THREADS", raising=False)
        _cores(monkeypatch, [90.0, 5.0])
        session = Session(SteeredModel(tiny, sae, FeatureSet()), sampling=SamplingSettings(max_new_tokens=2))
        assert session.send("hello").timings.threads == 1 and torch.get_num_threads() == 1
        _cores(monkeypatch, [5.0, 5.0])
        assert session.send("hello").timings.threads == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
