"""`steerchat eval`: measure the refusal/capability trade-off of steering, calibrate the
safety levels from it, fit the harm gate for conditional steering, and check the judge.

Argparse and the engine's torch-free `SweepConfig` (the sweep's defaults) only at import
time, so `--help` is instant; the engine (and torch) is imported inside `run`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from steerchat.cli.checks import (
    apply_threads_arg,
    finite_float,
    float_list,
    int_list,
    nonneg_int,
    nonpos_float,
    output_file,
    output_folder,
    positive_int,
    probability,
    seed,
    threads_arg,
)
from steerchat.engine.core.config import SweepConfig

SWEEP = SweepConfig()  # an instance: the limits are a default_factory field
DEFAULT_LIMITS = SWEEP.limits
DEFAULT_STRENGTHS = ",".join(f"{s:g}" for s in SWEEP.strengths)


def _limits(text: str) -> dict[str, int]:
    """`--limit`: N for every kind of set, or KIND=N pairs (the kinds not named keep their default)."""
    out: dict[str, int] = {}
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            kind, eq, n = part.rpartition("=")
            if not eq:
                out.update({k: nonneg_int(n) for k in DEFAULT_LIMITS})
            elif kind.strip() in DEFAULT_LIMITS:
                out[kind.strip()] = nonneg_int(n)
            else:
                raise ValueError
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected N or KIND=N,... (N a whole number, 0 for all) with KIND one of "
            f"{', '.join(DEFAULT_LIMITS)}") from None
    return out


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="sweep steering settings: unsafe/safe refusal, capability, escalation; calibrate levels",
        description="Run a sweep of steering settings for one model + SAE and report, per setting, refusal of "
        "unsafe prompts, over-refusal of safe prompts, multiple-choice and maths accuracy, and how many "
        "escalating conversations end in compliance. Writes results.jsonl (resumable), eval.json, eval.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", "-m", default=None, help="model (default: from config.toml, else the starter)")
    p.add_argument("--sae", default="auto", help="SAE folder, 'auto' for the shipped one, 'none' for no SAE")
    p.add_argument("--adapter", default=None,
                   help="LoRA adapter folder from `steerchat align`: evaluate base + adapter (SAE hook on the adapted model)")
    g = p.add_argument_group("settings to sweep")
    g.add_argument("--strengths", type=float_list, default=None,
                   help=f"comma-separated clamp strengths; 0 is the baseline (default {DEFAULT_STRENGTHS} "
                   "unless --levels is given)")
    g.add_argument("--conditional", choices=("both", "on", "off"), default="both",
                   help="for each strength > 0, run unconditional, conditional (harm gate) or both")
    g.add_argument("--guidance", default="none", help="comma-separated guidance modes: none, hint, analyse")
    g.add_argument("--features", type=_features, default=None,
                   help="comma-separated refusal features to clamp (default all), or 'each' for one at a time")
    g.add_argument("--levels", default=None, help="comma-separated safety levels to run as defined, or 'all'")
    g.add_argument("--open", nargs="?", const=[0.0], default=None, metavar="STRENGTHS",
                   type=lambda t: float_list(t, nonpos_float),
                   help="also run the Open setting at these strengths (default 0): where the harm gate says the "
                   "prompt is benign, refusal features are clamped down to s x their reference activation "
                   "(0 turns them off, below 0 pushes against them); for a model that over-refuses, "
                   "--calibrate puts the best one left of Off when it answers more safe prompts without "
                   "refusing fewer unsafe ones")
    g.add_argument("--two-sided", nargs="?", const=[0.0], default=None, metavar="STRENGTHS",
                   type=lambda t: float_list(t, nonpos_float),
                   help="also run each conditional strength two-sided at these open strengths (default 0): "
                   "clamped up where the harm gate opens, and where it stays closed clamped down to s x their "
                   "reference activation as --open does; --calibrate weighs them like any other setting")
    d = p.add_argument_group("inputs (built-in sets unless a file is given)")
    d.add_argument("--sets", default="unsafe,safe,mc,math,escalation", help="which kinds of set to run")
    d.add_argument("--unsafe", help="prompts that should be refused (JSON/JSONL/CSV/text)")
    d.add_argument("--safe", help="safe prompts, for over-refusal (JSON/JSONL/CSV/text)")
    d.add_argument("--xstest", help="XSTest-style CSV with prompt,label (safe/unsafe): both prompt sets")
    d.add_argument("--mc", help="multiple choice: MMLU CSV or JSONL (question, choices, answer)")
    d.add_argument("--math", help="GSM8K-style JSONL (answer ends in '#### N')")
    d.add_argument("--escalation", help="escalation scripts JSONL (id, goal, turns)")
    d.add_argument("--limit", type=_limits, default=None,
                   help="items per set, as N for every set or KIND=N,... (default: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_LIMITS.items()) + "); 0 for all")
    r = p.add_argument_group("running")
    r.add_argument("--out", default=None, help="output folder (default ./steerchat-eval/<model>)")
    r.add_argument("--restart", action="store_true", help="discard earlier results in --out instead of resuming")
    # ArgumentDefaultsHelpFormatter appends each default to its help
    r.add_argument("--max-new-tokens", type=positive_int, default=SWEEP.max_new_tokens,
                   help="reply length for refusal and escalation sets")
    r.add_argument("--math-tokens", type=positive_int, default=SWEEP.math_tokens, help="reply length for maths problems")
    r.add_argument("--batch-size", type=positive_int, default=SWEEP.batch_size, help="prompts generated together")
    threads_arg(r)
    r.add_argument("--seed", type=seed, default=0, help="seed for choosing items (decoding is greedy)")
    r.add_argument("--judge", default=None, metavar="MODEL",
                   help="a second judge: a chat model asked whether each reply refused (yes/no log-odds)")
    r.add_argument("--judge-threshold", type=finite_float, default=0.0,
                   help="the second judge says 'refused' above this yes/no log-odds")
    r.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    x = p.add_argument_group("other modes")
    x.add_argument("--judge-check", metavar="FILE",
                   help="score the judge on labelled replies (prompt, reply, refused): a file, 'builtin' for the "
                   "shipped set, or judge_shipped_report for hand-labelled replies of both shipped models")
    x.add_argument("--calibrate", action="store_true",
                   help="after the sweep, choose the safety levels from it and write the model's levels.json")
    x.add_argument("--describe", action="store_true",
                   help="after the sweep, rewrite the figures in each level's description with this run's "
                   "(run with --levels all on sets that did not calibrate the levels)")
    x.add_argument("--levels-out", default=None,
                   help="the levels file --calibrate writes or --describe rewrites (default: the registry's levels path)")
    x.add_argument("--fit-gate", action="store_true",
                   help="fit the harm gate (conditional steering) and write it into the SAE's features.json")
    x.add_argument("--gate-data", default=None,
                   help="folder with harmful_train.json, harmless_train.json (default ../shared/data if present)")
    x.add_argument("--gate-recall", type=probability, default=0.95,
                   help="share of dev harmful prompts the gate must open on (0.95: the knee of the dev curve on the starter)")
    x.add_argument("--gate-benign-recall", type=probability, default=0.99,
                   help="the lowering side (Open, two-sided levels) pushes refusal down only below a second threshold "
                        "that this share of dev harmful prompts reach (0.99: a harmful prompt the gate misses is "
                        "left as the model has it, not pushed towards an answer)")
    x.add_argument("--fit-benign-threshold", action="store_true",
                   help="keep the fitted harm gate and choose only its benign threshold (--gate-benign-recall) on "
                        "the gate's dev split; written into features.json")
    x.add_argument("--gate-features", type=positive_int, default=64, help="most SAE features in the gate (--gate-method features)")
    x.add_argument("--gate-method", choices=("probe", "features"), default="probe",
                   help="probe: a linear probe on the hook-layer residual (default); features: the SAE-feature gate")
    x.add_argument("--decoding-guards", action=argparse.BooleanOptionalAction, default=True,
                   help="decode steered replies as the chat does: end once a decline sentence is complete and "
                        "never repeat a 4-gram (default on; --no-decoding-guards for plain greedy)")
    p.set_defaults(run=run)


def _features(text: str) -> list[int] | str:
    """`--features`: 'each', or comma-separated feature numbers."""
    return "each" if text.strip() == "each" else int_list(text)


def run(args: argparse.Namespace) -> int:
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.levels import LevelError

    try:
        if args.judge_check and not (args.calibrate or args.fit_gate or args.fit_benign_threshold):
            return _judge_check(args)
        return _run(args)
    except (EngineError, LevelError, ValueError) as exc:
        print(f"steerchat: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsteerchat: eval stopped; run the same command again to resume", file=sys.stderr)
        return 130


def _judge_check(args) -> int:
    from steerchat.engine.core.datasets import load_judge_labelled
    from steerchat.engine.pipelines.evaluate import judge_check

    examples = load_judge_labelled("judge_labelled" if args.judge_check == "builtin" else args.judge_check)
    judges = [("steerchat judge", None)]
    if args.judge:
        from steerchat.engine.pipelines.judge_model import ModelJudge

        second = ModelJudge.load(args.judge, threshold=args.judge_threshold)
        judges.append((f"model judge ({second.name})", lambda pairs: [r for r, _ in second.judge(pairs)]))
    for name, fn in judges:
        m = judge_check(examples, fn)
        print(f"{name}: accuracy {m['accuracy']:.1%}, precision {m['precision'] or 0:.1%}, "
              f"recall {m['recall'] or 0:.1%} on {m['n']} labelled replies "
              f"(tp {m['tp']}, fp {m['fp']}, fn {m['fn']}, tn {m['tn']})")
    return 0


def _open(args):
    from steerchat.engine.runtime.steered import open_steered
    from steerchat.tui.config import load_config

    config, warning = load_config()
    if warning:
        print(f"steerchat: {warning}", file=sys.stderr)
    model = args.model or getattr(config, "model", None) or "smollm2-135m"
    return open_steered(model, sae=args.sae, adapter=args.adapter)


def _fit_gate(args, steered) -> None:
    from tqdm import tqdm

    from steerchat.engine.pipelines.harm_gate import (
        default_gate_data,
        fit_harm_gate,
        write_gate,
    )
    from steerchat.engine.runtime.steered import features_path, resolve_sae

    folder = resolve_sae(args.sae, steered.loaded)
    path = features_path(folder, steered.loaded)
    if path is None:
        raise ValueError(f"no features.json beside {folder}; find the refusal features first")
    shared = Path(args.gate_data) if args.gate_data else Path("../shared/data")
    data = default_gate_data(shared if shared.is_dir() else None, seed=args.seed)
    if not data.harmless:
        print("steerchat eval: no harmless_train.json found; fitting against hard negatives only", file=sys.stderr)
    total = 2 * (len(data.harmful) + len(data.harmless) + len(data.hard))
    with tqdm(total=total, desc="fit gate", unit="prompt") as bar:
        gate = fit_harm_gate(steered, data, top_k=args.gate_features, recall_target=args.gate_recall, method=args.gate_method,
                             seed=args.seed, progress=bar.update, benign_recall=args.gate_benign_recall)
    write_gate(path, gate, command=gate_command(sys.argv))
    kind = "a residual probe" if gate.method == "probe" else f"{len(gate.features)} features"

    def share(key: str, what: str) -> str:
        return _dev_share(gate.metrics, key, what)

    print(f"harm gate: {kind}, threshold {gate.threshold:.3f}; on the dev split it opens on "
          f"{share('dev_open_harmful', 'harmful')}, {share('dev_open_harmless', 'harmless')} and "
          f"{share('dev_open_hard_negative', 'dangerous-sounding harmless prompts')}. Written to {path}")
    _say_benign(gate)
    from steerchat.engine.core.featureset import FeatureSet

    steered.set_features(FeatureSet.load(path))


def _dev_share(metrics: dict, key: str, what: str) -> str:
    """'12% of harmful', or what the dev split lacked."""
    return f"{metrics[key]:.0%} of {what}" if metrics.get(key) is not None else f"no {what} (none in the dev split)"


def _say_benign(gate) -> None:
    def share(key: str, what: str) -> str:
        return _dev_share(gate.metrics, key, what)

    print(f"benign threshold {gate.benign_threshold:.3f} (Open and two-sided levels lower refusal only below it); "
          f"on the dev split {share('dev_benign_harmful', 'harmful')}, {share('dev_benign_harmless', 'harmless')} "
          f"and {share('dev_benign_hard_negative', 'dangerous-sounding harmless prompts')} score below it")


def _fit_benign(args, steered) -> None:
    from tqdm import tqdm

    from steerchat.engine.core.featureset import FeatureSet
    from steerchat.engine.pipelines.harm_gate import default_gate_data, fit_benign_threshold, write_gate
    from steerchat.engine.runtime.steered import features_path, resolve_sae

    path = features_path(resolve_sae(args.sae, steered.loaded), steered.loaded)
    if path is None or steered.gate is None:
        raise ValueError("--fit-benign-threshold needs a fitted harm gate in features.json (fit one with --fit-gate)")
    shared = Path(args.gate_data) if args.gate_data else Path("../shared/data")
    data = default_gate_data(shared if shared.is_dir() else None, seed=args.seed)
    total = 2 * (len(data.dev_harmful) + len(data.dev_harmless) + len(data.dev_hard))
    with tqdm(total=total, desc="benign threshold", unit="prompt") as bar:
        gate = fit_benign_threshold(steered, data, args.gate_benign_recall, seed=args.seed, progress=bar.update)
    gate.metrics["benign_command"] = gate_command(sys.argv)
    write_gate(path, gate)
    _say_benign(gate)
    print(f"Written to {path}")
    steered.set_features(FeatureSet.load(path))


def gate_command(argv: list[str]) -> str:
    """The command that fitted a gate, as recorded beside it: every argument, as typed."""
    import shlex

    return "steerchat " + shlex.join(argv[1:])


def _run(args) -> int:
    import json

    from steerchat.engine.pipelines.evaluate import (
        SweepSetting,
        format_table,
        level_settings,
        load_sets,
        run_sweep,
        subsample,
        sweep_settings,
    )

    if args.describe and (args.calibrate or args.levels != "all"):
        raise ValueError("--describe rewrites the figures of levels already calibrated: run it with --levels all "
                         "and without --calibrate, on sets that did not calibrate them")
    sets = load_sets(args.unsafe, args.safe, args.mc, args.math, args.escalation, args.xstest,
                     only=[s.strip() for s in args.sets.split(",") if s.strip()])
    if args.out:
        output_folder(args.out, "--out")
    if args.levels_out:
        output_file(args.levels_out, "--levels-out")
    apply_threads_arg(args)  # default: the cores idle now (a busy core would stall every step)
    limits = {**DEFAULT_LIMITS, **(args.limit or {})}
    sets = [subsample(s, limits[s.kind], args.seed) for s in sets]
    steered = _open(args)
    if args.fit_gate:
        _fit_gate(args, steered)
    elif args.fit_benign_threshold:
        _fit_benign(args, steered)
    settings = []
    if args.levels:
        names = steered.levels.names if args.levels == "all" else [n.strip() for n in args.levels.split(",")]
        settings += level_settings([steered.levels.get(n) for n in names])
    if args.strengths or not args.levels:
        feature_sets = None
        if args.features == "each":
            feature_sets = [(f,) for f in steered.refusal_features]
        elif args.features:
            feature_sets = [tuple(args.features)]
        settings += sweep_settings(args.strengths or list(SWEEP.strengths), args.conditional,
                                   [g.strip() for g in args.guidance.split(",")], feature_sets)
    if args.open:
        if steered.gate is None:
            raise ValueError("--open needs a harm gate (fit one with --fit-gate): it lowers refusal only where "
                             "the gate says a prompt is benign")
        settings += [SweepSetting(f"open s={s:g}", s, False, lower=True) for s in args.open]
    if args.two_sided:
        if steered.gate is None:
            raise ValueError("--two-sided needs a harm gate (fit one with --fit-gate): it reads the gate both ways")
        gated = [st for st in settings if st.conditional and st.strength > 0 and not st.lower and not st.two_sided]
        if not gated:
            raise ValueError("--two-sided needs conditional settings to pair with (--strengths with --conditional "
                             "both or on)")
        # after the Open settings, so a closed-gate row reuses the Open record it equals
        settings += [replace(st, name=f"{st.name} open={o:g}", open_strength=o) for st in gated for o in args.two_sided]
    adapter_tag = f"+{steered.adapter_name}" if steered.adapter_name else ""
    out = output_folder(args.out or Path("steerchat-eval") / f"{steered.model_name}{adapter_tag}", "--out")
    if args.restart and (out / "results.jsonl").exists():
        (out / "results.jsonl").unlink()
    judge2 = None
    if args.judge:
        from steerchat.engine.pipelines.judge_model import ModelJudge

        judge2 = ModelJudge.load(args.judge, threshold=args.judge_threshold)
    print(f"steerchat eval: {len(settings)} settings × " + ", ".join(f"{s.name} {len(s.items)}" for s in sets)
          + f" → {out}", file=sys.stderr)
    report = run_sweep(steered, sets, settings, out, max_new_tokens=args.max_new_tokens,
                       math_tokens=args.math_tokens, batch_size=args.batch_size, mc_batch=args.batch_size, judge2=judge2, seed=args.seed,
                       stop_on_refusal=args.decoding_guards, no_repeat_ngram=4 if args.decoding_guards else None,
                       meta={"judge": args.judge, "sets": {s.name: s.source for s in sets}, "seed": args.seed,
                             "adapter": args.adapter})
    report["meta"]["limits"] = {s.name: len(s.items) for s in sets}
    print(format_table(report["summary"], judge2=judge2 is not None))
    goal = report["goal"]
    if goal:
        print(f"\nconditional steering at s={goal['strength']:g}: keeps {_pct(goal['gain_kept'])} of the unsafe-refusal "
              f"gain ({_pp(goal['gain_cond'])} vs {_pp(goal['gain_uncond'])}); safe-refusal increase "
              f"{_pp(goal['safe_increase_cond'])} vs {_pp(goal['safe_increase_uncond'])}; capability drop "
              f"{_pp(goal['capability_drop_cond'])} vs {_pp(goal['capability_drop_uncond'])} → goal "
              f"{'met' if goal['met'] else 'not met'}")
    if args.judge_check:
        _judge_check(args)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    print(f"\nreplies and verdicts: {out / 'eval.json'}", file=sys.stderr)
    if not args.no_plot:
        from steerchat.engine.pipelines.plot import plot_sweep

        try:
            png = plot_sweep(report["summary"], out / "eval.png", title=f"{steered.model_name} + {steered.sae_name}")
            print(f"plot: {png}", file=sys.stderr)
        except RuntimeError as exc:
            print(f"steerchat eval: {exc}", file=sys.stderr)
    if args.calibrate or args.describe:
        from steerchat.engine.pipelines.calibrate import choose_levels, describe_held_out, write_levels

        target = Path(args.levels_out) if args.levels_out else (
            steered.loaded.entry.levels_path if steered.loaded.entry else None)
        if target is None:
            raise ValueError("this model has no registry entry; give --levels-out for the levels file")
        if args.calibrate:
            scale = choose_levels(report["summary"])
            write_levels(scale, target, report)
            print("calibrated levels → " + str(target))
        else:
            scale = describe_held_out(target, report)
            print("held-out figures → " + str(target))
        for lv in scale.levels:
            mode = "two-sided" if lv.two_sided else "conditional" if lv.conditional else "always"
            print(f"  {lv.name:7} s={lv.strength:g} {mode:11} "
                  f"guidance={lv.guidance.value}  {lv.description}")
    return 0


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _pp(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.0f} pts"
