"""Write the held-out sets the shipped levels are reported on (they chose nothing).

    python bench/heldout_sets.py OUT_DIR [--shared ../shared/data]

- benign_edgy_heldout.json: the half of shared benign_edgy the gate never saw
  (`harm_gate.split_shared(..., "edgy", "dev", "heldout")`);
- benign_scary_heldout.json, mild_harmful_heldout.json: the heldout splits of
  engine/gate_data/benign_scary.jsonl and mild_harmful.jsonl;
- benign_heldout.json: the two benign sets together (benign prompts that sound harmful);
- capability_heldout.jsonl: the built-in multiple-choice questions that calibration's
  seed-0 sample of 40 left out.
harmful_val and harmless_val from the shared data are used as they are.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()

    from steerchat.engine.core.datasets import builtin, load_prompts
    from steerchat.engine.pipelines.evaluate import load_sets, subsample
    from steerchat.engine.pipelines.harm_gate import GATE_DATA, read_split, split_shared

    args.out.mkdir(parents=True, exist_ok=True)

    def dump(name: str, prompts: list[str]) -> None:
        (args.out / name).write_text(json.dumps([{"instruction": p} for p in prompts], indent=0) + "\n")
        print(f"{args.out / name}: {len(prompts)}")

    edgy = split_shared([p.text for p in load_prompts(args.shared / "benign_edgy.json")], "edgy", "dev", "heldout")
    scary = read_split(GATE_DATA / "benign_scary.jsonl", "heldout")
    dump("benign_edgy_heldout.json", edgy["heldout"])
    dump("benign_scary_heldout.json", scary)
    dump("benign_heldout.json", edgy["heldout"] + scary)
    dump("mild_harmful_heldout.json", read_split(GATE_DATA / "mild_harmful.jsonl", "heldout"))
    rows = builtin("capability").read_text().splitlines()
    (mc,) = load_sets(only=["mc"])
    assert len(mc.items) == len(rows), "the built-in MC file has one question a line"
    calibrated = set(subsample(mc, 40, 0).ids)  # the calibration sweep's sample (seed 0, limit 40)
    kept = [r for r, item_id in zip(rows, mc.ids) if item_id not in calibrated]
    (args.out / "capability_heldout.jsonl").write_text("\n".join(kept) + "\n")
    print(f"{args.out / 'capability_heldout.jsonl'}: {len(kept)}")


if __name__ == "__main__":
    main()
