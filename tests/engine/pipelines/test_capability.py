"""Capability scoring: multiple choice by log-likelihood on a tiny model taught the answer,
and maths by exact match."""

from __future__ import annotations

import pytest
import torch

from steerchat.engine.runtime.batch import BatchReply
from steerchat.engine.pipelines.capability import accuracy, mc_prompt, score_multiple_choice, solve_math
from steerchat.engine.core.datasets import MathProblem, MCQuestion
from steerchat.engine.core.featureset import FeatureSet, RefusalFeature
from steerchat.engine.core.levels import SafetyLevel, SafetySettings
from steerchat.engine.runtime.sae import SAE
from steerchat.engine.core.trace import Verdict


QUESTION = MCQuestion("Which animal says meow?", ("dog", "cat", "owl", "fox"), 1)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from steerchat.engine.runtime.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def taught(tiny_model_dir):
    """A tiny model trained for a few steps to answer QUESTION with 'cat'."""
    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.steered import SteeredModel

    lm = load_model(str(tiny_model_dir), device="cpu")
    session = SteeredModel(lm)
    prep = session.prepare([], mc_prompt(QUESTION), SafetySettings())
    prefix = prep.input_ids[0].tolist()
    answer = lm.tokenizer.encode("cat", add_special_tokens=False)
    ids = torch.tensor([prefix + answer])
    labels = ids.clone()
    labels[0, : len(prefix)] = -100
    model = lm.model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return session


def test_log_likelihood_picks_the_taught_answer(taught):
    before = [r.predicted for r in score_multiple_choice(taught, [QUESTION], SafetySettings())]
    assert before == [1]
    # the same options in another order: the pick follows the text, not the position
    shuffled = MCQuestion(QUESTION.question, ("owl", "fox", "dog", "cat"), 3)
    res = score_multiple_choice(taught, [shuffled, QUESTION], SafetySettings(), batch_size=3)
    assert [r.predicted for r in res] == [3, 1]
    assert accuracy(res) == 1.0
    assert res[1].scores[1] == max(res[1].scores)


def test_option_score_is_the_mean_log_prob_of_its_tokens(loaded):
    from steerchat.engine.runtime.steered import SteeredModel

    session = SteeredModel(loaded)
    q = MCQuestion("Pick one.", ("ab", "xyz"), 0)
    mean = score_multiple_choice(session, [q], SafetySettings(), length_norm=True)[0].scores
    total = score_multiple_choice(session, [q], SafetySettings(), length_norm=False)[0].scores
    prefix = session.prepare([], mc_prompt(q), SafetySettings()).input_ids[0].tolist()
    for i, option in enumerate(q.choices):
        opt = loaded.tokenizer.encode(option, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=torch.tensor([prefix + opt])).logits[0].float(), -1)
        manual = sum(float(logp[len(prefix) - 1 + j, t]) for j, t in enumerate(opt))
        assert total[i] == pytest.approx(manual, abs=1e-4)
        assert mean[i] == pytest.approx(manual / len(opt), abs=1e-4)


def test_scores_are_unchanged_by_an_idle_hook_and_changed_by_a_clamp(loaded):
    from steerchat.engine.runtime.steered import SteeredModel

    plain = SteeredModel(loaded)
    sae = SAE.random(loaded.d_model, 128, k=8, hook_layer=1, seed=1)
    steered = SteeredModel(loaded, sae, FeatureSet(refusal_features=[RefusalFeature(5, 4.0)]))
    qs = [QUESTION, MCQuestion("2 + 2 = ?", ("3", "4", "22"), 1)]
    base = score_multiple_choice(plain, qs, SafetySettings(), batch_size=4)
    idle = score_multiple_choice(steered, qs, SafetySettings(), batch_size=4)
    for a, b in zip(base, idle):
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
    clamp = SafetySettings(level=SafetyLevel("x", strength=8.0))
    moved = score_multiple_choice(steered, qs, clamp, batch_size=4)
    assert moved[0].scores != pytest.approx(base[0].scores, abs=1e-3)


def test_math_exact_match(monkeypatch):
    replies = ["So 14+9 = 23.\n#### 23", "The answer is 1,200.", "I think it is 7.5", ""]
    monkeypatch.setattr("steerchat.engine.pipelines.capability.generate_batch", lambda session, prompts, *a, **k: [
        BatchReply(p, r, Verdict(False, 0.0)) for p, r in zip(prompts, replies)])
    problems = [MathProblem("a", "#### 23", "23"), MathProblem("b", "#### 1200", "1200"),
                MathProblem("c", "#### 7", "7"), MathProblem("d", "#### 0", "0")]
    res = solve_math(None, problems, SafetySettings())
    assert [r.predicted for r in res] == ["23", "1200", "7.5", None]
    assert [r.correct for r in res] == [True, True, False, False]
    assert accuracy(res) == 0.5
    assert accuracy([]) is None
