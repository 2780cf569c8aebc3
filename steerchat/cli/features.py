"""`steerchat features find-refusal | label | sweep`: refusal features for an SAE, their labels,
and refusal rates under steering. Only argparse and the engine's torch-free `FindConfig` (the
source of find-refusal's defaults and help) at import time; the engine loads when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
import time

from steerchat.cli.checks import (
    apply_threads_arg,
    finite_float,
    int_list,
    nonneg_float,
    output_file,
    output_folder,
    percentile,
    positive_int,
    threads_arg,
)
from steerchat.engine.core.config import FindConfig


def register(sub) -> None:
    p = sub.add_parser("features", help="find refusal features, label features, measure steering",
                       description="Refusal features for an SAE: find and validate them, label features, sweep strengths.")
    fs = p.add_subparsers(dest="features_command", metavar="SUBCOMMAND", required=True)

    f = fs.add_parser("find-refusal", help="find refusal features, validate them by steering, write features.json",
                      description="Find the SAE features that make the model refuse, validate them by clamping "
                      "them on held-out prompts, and write features.json beside the SAE. Method 'direction' "
                      "(default) fits the refusal direction (mean residual on refusal replies minus on the "
                      "model's compliant replies) with a few decoder rows; 'contrast' ranks single features by "
                      "how much more they fire on refusal replies. Files may be sliced as FILE@START:END.")
    f.add_argument("--model", "-m", default="smollm2-135m")
    f.add_argument("--sae", required=True, help="SAE folder (features.json goes where --out says)")
    f.add_argument("--harmful", required=True,
                   help="harmful prompts; a refusal and the model's own reply are read on each")
    f.add_argument("--harmless", help="contrast: harmless prompts to contrast with (the direction method does not use them)")
    f.add_argument("--val-harmful", required=True, help="held-out harmful prompts for validation")
    f.add_argument("--val-harmless", required=True, help="held-out harmless prompts for validation")
    f.add_argument("--replies", help="JSONL of the model's own replies (prompt, reply), e.g. a collection's "
                   "generated.jsonl; missing ones are generated")
    f.add_argument("--method", choices=("direction", "contrast"), default=FindConfig.method,
                   help=f"how features are found ({FindConfig.method})")
    sizes = ",".join(str(n) for n in FindConfig.sizes)
    f.add_argument("--sizes", type=_sizes, default=sizes,
                   help=f"direction: comma-separated set sizes to fit and validate ({sizes})")
    f.add_argument("--candidates", type=positive_int, default=FindConfig.candidates,
                   help=f"contrast: features validated by steering ({FindConfig.candidates})")
    f.add_argument("--max-features", type=positive_int, default=FindConfig.max_features,
                   help=f"contrast: most features in the set ({FindConfig.max_features})")
    f.add_argument("--percentile", type=percentile, default=FindConfig.percentile,
                   help=f"contrast: percentile of refusal activations for m_f ({FindConfig.percentile:g})")
    f.add_argument("--probe-strength", type=nonneg_float, default=FindConfig.probe_strength,
                   help=f"s at which candidates (contrast) or sets (direction) are validated ({FindConfig.probe_strength:g})")
    f.add_argument("--max-new-tokens", type=positive_int, default=FindConfig.max_new_tokens,
                   help=f"reply length in validation ({FindConfig.max_new_tokens})")
    f.add_argument("--batch-size", type=positive_int, default=FindConfig.batch_size)
    f.add_argument("--min-gain", type=finite_float, default=FindConfig.min_gain,
                   help="contrast: a feature joins the set when the combination's harmful refusal rises by at least "
                   f"this ({FindConfig.min_gain:g})")
    f.add_argument("--reuse", help="contrast: features.json of an earlier run: reuse its ranked and validated candidates, "
                   "redo only the combination")
    f.add_argument("--out", help="folder for features.json (default: the SAE folder's parent if it is called 'sae', "
                   "else the SAE folder)")
    threads_arg(f)
    f.set_defaults(run=run_find)

    lab = fs.add_parser("label", help="label the most active features from their top-activating contexts",
                        description="Write labels.json (and feature_contexts.json) beside features.json. "
                        "Features are ranked by activation mass; with --top all every feature gets a label: "
                        "one that fired fewer than 5 times is labelled 'rare: <its tokens>', one that never "
                        "fired in the collection 'never fired in the labelling corpus'.")
    lab.add_argument("--model", "-m", default="smollm2-135m", help="model whose tokenizer reads the contexts")
    lab.add_argument("--sae", required=True)
    lab.add_argument("--activations", required=True, help="a collection from `steerchat sae collect`")
    lab.add_argument("--top", type=_top, default=1000,
                     help="how many features to label, or 'all' (1000; a count >= the SAE's width also labels all)")
    lab.add_argument("--out", help="folder for labels.json (default as for find-refusal)")
    threads_arg(lab)
    lab.set_defaults(run=run_label)

    sw = fs.add_parser("sweep", help="refusal rates on harmful and harmless prompts at several strengths",
                       description="Greedy replies judged by the engine's refusal judge, at each strength "
                       "(unconditional clamp of the features in features.json), with and without guidance.")
    sw.add_argument("--model", "-m", default="smollm2-135m")
    sw.add_argument("--sae", required=True)
    sw.add_argument("--features", help="features.json (default: beside the SAE)")
    sw.add_argument("--harmful", required=True)
    sw.add_argument("--harmless", required=True)
    sw.add_argument("--points", type=_points, default="0,0g,1g,2g,3g",
                    help="strengths; a trailing g adds the guidance hint (default 0,0g,1g,2g,3g)")
    sw.add_argument("--max-new-tokens", type=positive_int, default=24)
    sw.add_argument("--batch-size", type=positive_int, default=32)
    sw.add_argument("--json", help="also write the rows to this JSON file")
    threads_arg(sw)
    sw.set_defaults(run=run_features_sweep)


def _top(text: str) -> int | None:
    """`--top`: a whole number >= 1, or 'all' (None: every feature)."""
    return None if text.strip().lower() == "all" else positive_int(text)


def _sizes(text: str) -> str:
    """`--sizes`: checked as comma-separated whole numbers >= 1, kept as given (for the recorded command)."""
    int_list(text, positive_int)
    return text


def _points(text: str) -> str:
    """`--points`: checked as comma-separated strengths (>= 0), each optionally ending in g (guidance)."""
    _parse_points(text)
    return text


def _parse_points(text: str) -> list[tuple[float, bool]]:
    out = []
    for p in (p.strip() for p in text.split(",")):
        if p:
            out.append((nonneg_float(p[:-1] if p.endswith("g") else p), p.endswith("g")))
    if not out:
        raise argparse.ArgumentTypeError(f"{text!r}: expected strengths like 0,0g,1g")
    return out


def command_line(args: argparse.Namespace, *words: str) -> str:
    """The command that produced an artifact, rebuilt from the parsed flags (recorded in the output)."""
    parts = ["steerchat", *words]
    for key, value in vars(args).items():
        if key in ("run", "command") or key.endswith("_command") or value in (None, False, []):
            continue
        flag = "--" + key.replace("_", "-")
        for v in value if isinstance(value, list) else [value]:
            parts += [flag] if v is True else [flag, str(v)]
    return " ".join(parts)


def _prompts(spec: str) -> list[str]:
    from steerchat.engine.pipelines.activations import Source, read_prompts

    src = Source.parse("prompts", spec)
    return read_prompts(src.path)[src.start : src.end]


def _out_folder(args):
    from pathlib import Path

    if args.out:
        return Path(args.out)
    sae = Path(args.sae)
    return sae.parent if sae.name == "sae" else sae


def _steered(args):
    from pathlib import Path

    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.steered import SteeredModel, load_sae_for

    loaded = load_model(args.model)
    return SteeredModel(loaded, load_sae_for(loaded, Path(args.sae)))


def run_find(args: argparse.Namespace) -> int:
    from steerchat.engine.core.api import EngineError
    from steerchat.engine.pipelines.refusal_features import (
        find_refusal_features,
        load_replies,
        write_features,
    )

    apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
    try:
        if args.out:
            output_folder(args.out, "--out")
        if args.replies:
            load_replies(args.replies)  # a missing file or a bad row is reported before the model loads
        if args.method == "contrast" and not args.harmless:
            raise ValueError("--method contrast needs --harmless prompts to contrast refusals with")
        harmful, harmless = _prompts(args.harmful), _prompts(args.harmless) if args.harmless else []
        val_h, val_s = _prompts(args.val_harmful), _prompts(args.val_harmless)
        steered = _steered(args)
        previous = None
        if args.reuse:
            from steerchat.engine.core.featureset import FeatureSet

            previous = FeatureSet.load(args.reuse).extra.get("find_refusal")
            if not previous:
                raise EngineError(f"{args.reuse}: holds no find-refusal record to reuse")
        replies = load_replies(args.replies) if args.replies else {}
        missing = [] if previous else [p for p in harmful if p not in replies]
        if missing:
            from steerchat.engine.core.levels import SafetySettings
            from steerchat.engine.runtime.batch import generate_batch

            print(f"steerchat: generating the model's own replies to {len(missing)} harmful prompts", file=sys.stderr)
            for r in generate_batch(steered, missing, SafetySettings(), 40, args.batch_size):
                replies[r.prompt] = r.reply
        sizes = tuple(int_list(args.sizes, positive_int))
        cfg = FindConfig(method=args.method, sizes=sizes, candidates=args.candidates, max_features=args.max_features, percentile=args.percentile,
                         probe_strength=args.probe_strength, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, min_gain=args.min_gain)
        t0 = time.perf_counter()
        features, record = find_refusal_features(steered, harmful, replies, harmless, val_h, val_s, cfg,
                                                 previous=previous)
        record["seconds"] = round(time.perf_counter() - t0, 1)
        path = write_features(_out_folder(args), features, record, steered.sae.name, steered.sae.cfg.hook_layer,
                              command_line(args, "features", "find-refusal"))
    except (EngineError, ValueError) as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    print(f"unsteered refusal on the held-out harmful prompts: {record['baseline']['harmful_refusal']:.0%}")
    for t in record.get("sets", []):
        print(f"  {t['size']:>3} features  cos {t['cosine']:.3f} with the refusal direction  "
              f"harmful {t['harmful_refusal']:.0%}  harmless {t['harmless_refusal']:.0%}")
    for c in record["candidates"]:
        v = c["validation"]
        tail = f"  harmful {v['harmful_refusal']:.0%}  harmless {v['harmless_refusal']:.0%}" if v else ""
        print(f"  feature {c['feature']:>5}  score {c['score']:7.3f}  m_f {c['reference_activation']:7.3f}{tail}")
    print(f"chosen: {[f.feature for f in features]} (harmful refusal {record['combined_harmful_refusal']:.0%} "
          f"at s={cfg.probe_strength:g}); wrote {path}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from collections import Counter

    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.featureset import FeatureSet
    from steerchat.engine.pipelines.feature_labels import CONTEXTS_NAME, label_features
    from steerchat.engine.runtime.loading import load_model
    from steerchat.engine.runtime.sae import SAE

    apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
    try:
        if args.out:
            output_folder(args.out, "--out")
        tok = load_model(args.model).tokenizer
        sae = SAE.load(args.sae)
        labels, record = label_features(sae, args.activations, tok, top=args.top)
        out = _out_folder(args)
        path = out / "features.json"
        fs = FeatureSet.load(path) if path.is_file() else FeatureSet(hook_layer=sae.cfg.hook_layer, sae=sae.name)
        fs.labels = labels
        for r in fs.refusal_features:
            r.label = labels.get(r.feature, r.label)
        fs.save(out)
        (out / CONTEXTS_NAME).write_text(json.dumps(record, indent=0, ensure_ascii=False))
    except EngineError as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    for f in [r.feature for r in fs.refusal_features] + list(labels)[:10]:
        print(f"  {f:>5}: {labels.get(f, '(not among the labelled)')}")
    status = Counter(r.get("status", "normal") for r in record.values())
    print(f"labelled {len(labels)} of {sae.d_sae} features ({status['normal']} normal, {status['rare']} rare, "
          f"{status['never fired']} never fired); wrote {out / 'labels.json'} and {out / CONTEXTS_NAME}")
    return 0


def run_features_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from steerchat.engine.core.api import EngineError
    from steerchat.engine.core.featureset import FeatureSet
    from steerchat.engine.pipelines.refusal_features import sweep

    apply_threads_arg(args)  # the cores idle now: a busy core would stall every step
    try:
        if args.json:
            output_file(args.json, "--json")
        points = _parse_points(args.points)
        sae = Path(args.sae)
        fpath = Path(args.features) if args.features else (
            sae / "features.json" if (sae / "features.json").is_file() else sae.parent / "features.json")
        fs = FeatureSet.load(fpath)
        steered = _steered(args)
        rows = sweep(steered, [r.feature for r in fs.refusal_features], [r.reference_activation for r in fs.refusal_features],
                     _prompts(args.harmful), _prompts(args.harmless), points, args.max_new_tokens, args.batch_size)
    except (EngineError, ValueError) as exc:
        print(f"steerchat: {exc}", file=sys.stderr)
        return 1
    print(f"{'s':>4} {'guided':>7} {'harmful':>8} {'harmless':>9}")
    for r in rows:
        print(f"{r['strength']:>4g} {str(r['guidance']):>7} {r['harmful_refusal']:>8.0%} {r['harmless_refusal']:>9.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0
