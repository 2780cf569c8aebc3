"""The command line takes its defaults from the engine's config dataclasses (engine/core/config.py).

For each subcommand: the configuration a run with no tuning flags hands to the engine equals
the dataclass's defaults field by field (the engine's entry point is replaced by a stub that
records what it was given), `--help` shows the dataclass's values, a changed engine default
changes the flag and its help, and none of it imports torch.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from types import SimpleNamespace

import pytest

from steerchat.cli import align, eval as eval_cli, features, sae
from steerchat.cli.main import build_parser
from steerchat.engine.core.config import CollectConfig, FindConfig, FinetuneConfig, Plan, SweepConfig, TrainConfig


class Captured(Exception):
    """Raised by a stubbed engine entry point once it has recorded its arguments."""


def _parse(argv: list[str]):
    return build_parser().parse_args(argv)


def _help(argv: list[str], capsys) -> str:
    """The help of a subcommand, with argparse's line wrapping undone."""
    with pytest.raises(SystemExit):
        _parse([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def _assert_fields_equal(got, want) -> None:
    for f in dataclasses.fields(want):
        assert getattr(got, f.name) == getattr(want, f.name), f.name
    assert got == want


# ------------------------------------------------------------------ effective defaults


def test_sae_collect_defaults_are_collect_configs(tmp_path):
    args = _parse(["sae", "collect", "--out", str(tmp_path)])
    assert args.max_new_tokens == CollectConfig.max_new_tokens
    # None: the preset's value, else the engine's
    assert (args.gen_batch_size, args.collect_batch_size, args.shard_tokens) == (None, None, None)
    _assert_fields_equal(sae._collect_config(args, "m", 3, {}), CollectConfig(model="m", hook_layer=3, sources=[]))

    preset = sae.PRESETS["paper-phi3"]
    cfg = sae._collect_config(args, "m", 3, preset)
    assert (cfg.gen_batch_size, cfg.batch_size, cfg.shard_tokens) == (
        preset["gen_batch_size"], preset["collect_batch_size"], preset["shard_tokens"])
    flagged = _parse(["sae", "collect", "--out", str(tmp_path), "--collect-batch-size", "3"])
    assert sae._collect_config(flagged, "m", 3, preset).batch_size == 3


def test_sae_train_defaults_are_train_configs(tmp_path, monkeypatch, capsys):
    from steerchat.engine.pipelines import sae_train
    from steerchat.engine.pipelines.activations import Manifest

    act = tmp_path / "acts"
    act.mkdir()
    Manifest(config={}, d_in=16, complete=True).save(act)
    seen = {}

    def fake_train(cfg, *a, **kw):
        seen["cfg"] = cfg
        return {"steps": cfg.steps}

    monkeypatch.setattr(sae_train, "train", fake_train)
    args = _parse(["sae", "train", "--activations", str(act), "--out", str(tmp_path / "sae")])
    assert (args.k, args.tokens, args.batch_size, args.lr, args.dead_tokens) == (None,) * 5
    assert (args.warmup, args.aux_k, args.aux_coef, args.holdout, args.checkpoint_every, args.seed) == (
        TrainConfig.warmup, TrainConfig.aux_k, TrainConfig.aux_coef, TrainConfig.holdout,
        TrainConfig.checkpoint_every, TrainConfig.seed)
    assert args.run(args) == 0, capsys.readouterr().err
    _assert_fields_equal(seen["cfg"], TrainConfig(d_sae=sae.D_SAE_PER_D_IN * 16))


def test_find_refusal_defaults_are_find_configs(tmp_path, monkeypatch):
    from steerchat.engine.pipelines import refusal_features

    def fake_find(steered, harmful, replies, harmless, val_h, val_s, cfg, previous=None):
        raise Captured(cfg)

    monkeypatch.setattr(features, "_prompts", lambda spec: [])
    monkeypatch.setattr(features, "_steered", lambda args: None)
    monkeypatch.setattr(refusal_features, "find_refusal_features", fake_find)
    args = _parse(["features", "find-refusal", "--sae", str(tmp_path), "--harmful", "h.json",
                   "--val-harmful", "vh.json", "--val-harmless", "vs.json"])
    with pytest.raises(Captured) as got:
        args.run(args)
    _assert_fields_equal(got.value.args[0], FindConfig())


@pytest.fixture
def align_stubs(monkeypatch):
    """Every align stage replaced by a stub that records the plan and the fine-tuning config."""
    from steerchat.engine.pipelines.align import pipeline
    from steerchat.engine.runtime import steered

    seen = {}

    def stage(name, result):
        def run(*args, **kw):
            seen[name] = args
            return result

        return run

    monkeypatch.setattr(steered, "open_steered", lambda *a, **kw: SimpleNamespace(loaded=None))
    monkeypatch.setattr(pipeline, "stage_induce", stage("induce", "0 kept"))
    monkeypatch.setattr(pipeline, "stage_analyse", stage("analyse", []))
    monkeypatch.setattr(pipeline, "stage_dataset", stage("dataset", {"rows": 0, "counts": {}, "dropped_for_hint_words": 0}))
    monkeypatch.setattr(pipeline, "stage_finetune", stage("finetune", None))
    return seen


def test_align_run_defaults_are_plan_and_finetune_configs(tmp_path, align_stubs, capsys):
    args = _parse(["align", "run", "--model", "stub", "--work", str(tmp_path), "--instructions", "bad.json"])
    assert args.run(args) == 0, capsys.readouterr().err
    plan = align_stubs["induce"][2]
    _assert_fields_equal(plan, Plan(instructions="bad.json"))
    assert all(align_stubs[s][2] is plan for s in ("analyse", "dataset"))
    _assert_fields_equal(align_stubs["finetune"][3], FinetuneConfig())


def test_align_stage_without_a_flag_gets_the_plans_default(tmp_path, align_stubs, capsys):
    args = _parse(["align", "dataset", "--model", "stub", "--work", str(tmp_path)])
    assert not hasattr(args, "analysis_tokens") and not hasattr(args, "limit")
    assert args.run(args) == 0, capsys.readouterr().err
    _assert_fields_equal(align_stubs["dataset"][2], Plan())


def test_eval_defaults_are_sweep_configs(tmp_path, monkeypatch):
    from steerchat.engine.pipelines import evaluate

    def fake_run_sweep(steered, sets, settings, out, **kw):
        raise Captured(sets, settings, kw)

    monkeypatch.setattr(eval_cli, "_open", lambda args: SimpleNamespace(
        refusal_features=[], adapter_name=None, model_name="stub", levels=None))
    monkeypatch.setattr(evaluate, "run_sweep", fake_run_sweep)
    args = _parse(["eval", "--out", str(tmp_path)])
    with pytest.raises(Captured) as got:
        args.run(args)
    sets, settings, kw = got.value.args
    want = SweepConfig()
    assert (kw["max_new_tokens"], kw["math_tokens"], kw["batch_size"], kw["mc_batch"]) == (
        want.max_new_tokens, want.math_tokens, want.batch_size, want.batch_size)
    assert sorted({st.strength for st in settings}) == sorted(want.strengths)
    full = {s.kind: len(s.items) for s in evaluate.load_sets()}
    assert {s.kind for s in sets} == set(want.limits)
    for s in sets:
        assert len(s.items) == min(want.limits[s.kind], full[s.kind]), s.kind


def test_sweep_config_agrees_with_run_sweep():
    from steerchat.engine.pipelines.evaluate import run_sweep

    params = inspect.signature(run_sweep).parameters
    assert params["max_new_tokens"].default == SweepConfig.max_new_tokens
    assert params["math_tokens"].default == SweepConfig.math_tokens


# ------------------------------------------------------------------ help texts


HELP = {
    ("sae", "train"): [
        f"active latents per token (default {TrainConfig.k})",
        f"training tokens (default {TrainConfig.tokens:,})",
        f"tokens per step (default {TrainConfig.batch_size})",
        f"peak learning rate (default {TrainConfig.lr:g})",
        f"weight of the aux-k loss ({TrainConfig.aux_coef:g})",
        f"is dead (default {TrainConfig.dead_tokens:,})",
        f"held out for evaluation ({TrainConfig.holdout:g})",
        f"steps between checkpoints ({TrainConfig.checkpoint_every})",
        f"number of latents (default {sae.D_SAE_PER_D_IN} x d_in)",
        f"reply length when the model answers ({CollectConfig.max_new_tokens})",
        f"prompts per generation batch ({CollectConfig.gen_batch_size})",
        f"documents per forward pass ({CollectConfig.batch_size})",
        f"activations per shard file ({CollectConfig.shard_tokens})",
    ],
    ("features", "find-refusal"): [
        f"how features are found ({FindConfig.method})",
        "set sizes to fit and validate (" + ",".join(map(str, FindConfig.sizes)) + ")",
        f"features validated by steering ({FindConfig.candidates})",
        f"most features in the set ({FindConfig.max_features})",
        f"activations for m_f ({FindConfig.percentile:g})",
        f"are validated ({FindConfig.probe_strength:g})",
        f"reply length in validation ({FindConfig.max_new_tokens})",
        f"at least this ({FindConfig.min_gain:g})",
    ],
    ("align", "finetune"): [
        f"prompts generated together (default {Plan.batch_size})",
        f"longest generated reply (default {Plan.max_new_tokens})",
        f"optimizer steps (default {FinetuneConfig.steps})",
        f"rows per micro-batch (default {FinetuneConfig.batch_size})",
        f"micro-batches per optimizer step (default {FinetuneConfig.grad_accum})",
        f"peak learning rate (default {FinetuneConfig.lr:g})",
        f"warm-up steps (default {FinetuneConfig.warmup_steps})",
        f"LoRA rank (default {FinetuneConfig.rank})",
        f"LoRA alpha (default {FinetuneConfig.alpha})",
        f"LoRA dropout (default {FinetuneConfig.dropout:g})",
        f"longest training sequence in tokens (default {FinetuneConfig.max_seq_len})",
        f"checkpoint every N steps (default {FinetuneConfig.save_every})",
    ],
    ("align", "run"): [
        f"longest analysis in tokens (default {Plan.analysis_tokens})",
        f"use N ordinary instructions (default {Plan.ordinary_limit})",
    ],
    ("eval",): [
        "(default " + ",".join(f"{s:g}" for s in SweepConfig.strengths) + " unless --levels is given)",
        "(default: " + ", ".join(f"{k} {v}" for k, v in SweepConfig().limits.items()) + "); 0 for all",
        f"reply length for refusal and escalation sets (default: {SweepConfig.max_new_tokens})",
        f"reply length for maths problems (default: {SweepConfig.math_tokens})",
        f"prompts generated together (default: {SweepConfig.batch_size})",
    ],
}


@pytest.mark.parametrize("argv", list(HELP), ids=" ".join)
def test_help_shows_the_configs_values(argv, capsys):
    text = _help(list(argv), capsys)
    for fragment in HELP[argv]:
        assert fragment in text


# (config class, field, a new default, the subcommand, the flag's dest, the help that must follow)
CHANGES = [
    (FindConfig, "candidates", 5, ["features", "find-refusal"], "candidates", "features validated by steering (5)"),
    (FindConfig, "sizes", (2, 3), ["features", "find-refusal"], "sizes", "set sizes to fit and validate (2,3)"),
    (FinetuneConfig, "rank", 3, ["align", "finetune"], "rank", "LoRA rank (default 3)"),
    (Plan, "ordinary_limit", 7, ["align", "dataset"], "ordinary_limit", "use N ordinary instructions (default 7)"),
    (TrainConfig, "holdout", 0.25, ["sae", "train"], "holdout", "held out for evaluation (0.25)"),
    (CollectConfig, "max_new_tokens", 11, ["sae", "collect"], "max_new_tokens", "when the model answers (11)"),
]


@pytest.mark.parametrize("cls, name, value, argv, dest, fragment", CHANGES, ids=[f"{c[0].__name__}.{c[1]}" for c in CHANGES])
def test_a_changed_engine_default_changes_the_flag_and_its_help(cls, name, value, argv, dest, fragment, monkeypatch,
                                                                  capsys):
    monkeypatch.setattr(cls, name, value)
    required = {"features": ["--sae", "s", "--harmful", "h", "--val-harmful", "v", "--val-harmless", "w"],
                "sae": ["--activations", "a", "--out", "o"] if argv[1] == "train" else ["--out", "o"]}
    args = _parse([*argv, *required.get(argv[0], [])])
    assert getattr(args, dest) == (",".join(map(str, value)) if name == "sizes" else value)
    assert fragment in _help(argv, capsys)


# ------------------------------------------------------------------ import cost


def test_the_command_line_modules_and_their_help_do_not_import_torch(tmp_path):
    code = ("import sys, io, contextlib\n"
            "import steerchat.cli.main, steerchat.cli.sae, steerchat.cli.features, steerchat.cli.align, steerchat.cli.eval\n"
            "assert 'torch' not in sys.modules, 'import'\n"
            "for argv in (['sae', 'train'], ['features', 'find-refusal'], ['align', 'finetune'], ['eval']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n"
            "            steerchat.cli.main.main([*argv, '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    assert 'usage: steerchat' in out.getvalue(), argv\n"
            "    assert 'torch' not in sys.modules, argv\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("argv", [
    ["sae", "collect", "--out", "x"], ["sae", "train", "--activations", "a", "--out", "x"],
    ["features", "find-refusal", "--sae", "s", "--harmful", "h", "--val-harmful", "v", "--val-harmless", "w"],
    ["features", "label", "--sae", "s", "--activations", "a"],
    ["features", "sweep", "--sae", "s", "--harmful", "h", "--harmless", "w"], ["prepare", "m"],
    ["eval"], ["align", "run"],
])
def test_every_command_that_runs_the_model_takes_threads(argv, monkeypatch):
    """--threads N is given to torch; without it, the cores idle when the run starts."""
    from steerchat.cli.checks import apply_threads_arg

    assert _parse(argv).threads is None
    args = _parse([*argv, "--threads", "3"])
    assert args.threads == 3
    seen = []
    monkeypatch.setattr("steerchat.engine.runtime.threads.apply_threads", lambda n=None: seen.append(n) or 3)
    assert apply_threads_arg(args) == 3 and seen == [3]
    with pytest.raises(SystemExit):
        _parse([*argv, "--threads", "0"])
