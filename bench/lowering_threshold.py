"""What a separate, lower gate threshold for the lowering side would do, from eval results alone.

Open and the two-sided levels lower refusal wherever the harm gate stays closed, so a harmful
prompt the gate misses is pushed towards an answer. A second threshold t_low < t would lower
only where the gate's score is below t_low; between t_low and t the prompt would be left as
it is (Off). Every reply that rule would give is already in an `eval --levels all` results
file, so the rule can be measured without generating anything:

- score >= t (gate open): the level's own record (for Open: Off's, Open never raises);
- score < t_low: the level's own record (lowered there either way);
- in between: Off's record.

t_low is chosen on the gate's dev split only (the score that all but --dev-share of the dev
harmful prompts exceed), never on the sets measured. The model is loaded only to score the dev
split with the shipped gate.

This analysis chose to ship the rule: features.json's `harm_gate.benign_threshold`, chosen by
`steerchat eval --fit-benign-threshold`. The script still answers "what would another t_low
do" from a run made without a benign threshold (one made with it has already left its band
alone, and is refused).

    python bench/lowering_threshold.py --model qwen2.5-coder-0.5b --dev-share 0.01 \
        --results uncensorbench=W/qwen-uncensor/results.jsonl:unsafe \
        --results benign-scary=W/describe-qwen/results.jsonl:safe
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _records(path: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """A results file's records by (setting key, set), each keyed by item id."""
    from steerchat.engine.pipelines.evaluate import ResultsFile

    if not path.is_file():
        raise SystemExit(f"{path}: no such results file")
    results = ResultsFile(path, {})  # any sweep's meta: nothing to compare it with
    meta = next((json.loads(line)["meta"] for line in path.open() if line.startswith('{"meta"')), {})
    if (meta.get("harm_gate") or {}).get("benign_threshold") is not None:
        raise SystemExit(f"{path}: this run already had a benign threshold; measure a run made without one")
    by: dict[tuple[str, str], dict[str, dict]] = {}
    for r in results.records:
        by.setdefault((r["setting"], r["set"]), {})[r["id"]] = r
    return by


def recombine(off: dict[str, dict], level: dict[str, dict], threshold: float, t_low: float,
              raises: bool) -> list[dict]:
    """Each item's record under the two-threshold rule (see the module docstring)."""
    out = []
    for item, rec in level.items():
        score = off[item]["gate_score"]
        lowered_or_raised = score < t_low or (raises and score >= threshold)
        out.append(rec if lowered_or_raised else off[item])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dev-share", type=float, default=0.01,
                    help="share of the dev harmful prompts allowed below t_low")
    ap.add_argument("--shared", default="../shared/data", help="the folder default_gate_data reads")
    ap.add_argument("--results", action="append", required=True, metavar="NAME=RESULTS.jsonl:SET",
                    help="an `eval --levels all` results file and the set in it to measure")
    args = ap.parse_args()

    from steerchat.engine.core.levels import SafetySettings
    from steerchat.engine.pipelines.evaluate import level_settings
    from steerchat.engine.pipelines.harm_gate import default_gate_data, gate_decisions
    from steerchat.engine.runtime.steered import open_steered

    steered = open_steered(args.model)
    if steered.gate is None:
        raise SystemExit(f"{args.model} has no harm gate")
    dev = default_gate_data(Path(args.shared))
    scores = sorted(s for s, *_ in gate_decisions(steered, dev.dev_harmful, SafetySettings(), 16))
    threshold = steered.gate.threshold
    t_low = scores[int(args.dev_share * (len(scores) - 1))]
    hard = [s for s, *_ in gate_decisions(steered, dev.dev_hard, SafetySettings(), 16)] if dev.dev_hard else []
    print(f"gate threshold {threshold:.2f}; t_low {t_low:.2f}: {args.dev_share:.0%} of {len(scores)} dev harmful "
          f"prompts below it" + (f", and {sum(s < t_low for s in hard) / len(hard):.0%} of {len(hard)} dev "
                                 "benign-but-scary ones" if hard else ""))
    settings = {st.name: st for st in level_settings(list(steered.levels.levels))}
    lowering = [n for n, st in settings.items() if st.lower or st.two_sided]
    if not lowering or "Off" not in settings:
        raise SystemExit(f"{args.model}'s levels have no Off or no level that lowers refusal")
    for spec in args.results:
        name, _, rest = spec.partition("=")
        path, _, set_name = rest.rpartition(":")
        by = _records(Path(path))
        off = by[(settings["Off"].key, set_name)]
        cells = []
        for lv in ["Off", *lowering]:
            st = settings[lv]
            level = by.get((st.key, set_name))
            if level is None:
                cells.append(f"{lv} —")
                continue
            metric = "correct" if set_name == "mc" else "refused"
            shipped = sum(r[metric] for r in level.values()) / len(level)
            rule = recombine(off, level, threshold, t_low, raises=not st.lower)
            new = sum(r[metric] for r in rule) / len(rule)
            cells.append(f"{lv} {100 * shipped:.0f}" + ("" if lv == "Off" else f" → {100 * new:.0f}"))
        print(f"  {name:14} {'accuracy' if set_name == 'mc' else 'refused'}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
