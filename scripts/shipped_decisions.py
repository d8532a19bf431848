"""Write the shipped router's scores and decisions on the default pair's test split, at the default
point and at every named knob, as JSON. Run once on a release to record what it decides;
``tests/test_default_pair.py`` checks that the current code decides the same on every row.

    python scripts/shipped_decisions.py --output tests/data/shipped_decisions.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from hybridllm import Router, default_router_dir, read_table

REPO = Path(__file__).resolve().parents[1]
KNOBS = (
    [{}]
    + [{"max_quality_drop": q} for q in (0, 0.5, 1, 2, 5, 10)]
    + [{"cost_advantage": c} for c in (10, 30, 50, 70, 90)]
    + [{"threshold": t} for t in (0.2, 0.5, 0.8)]
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=str(REPO / "data/default-pair/split/test.jsonl"))
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    router = Router(default_router_dir())
    rows = read_table(args.table)
    prompts = [r["prompt"] for r in rows]
    scores = router.score(prompts).reshape(len(rows), -1)[:, 0]
    out = {
        "what": "the shipped router's scores and decisions on data/default-pair/split/test.jsonl",
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip(),
        "ids": [r["id"] for r in rows],
        "scores": [float(s) for s in scores],
        "decisions": [],
    }
    for knob in KNOBS:
        ds = router.route_batch(prompts, **knob)
        out["decisions"].append({"knob": knob, "threshold": ds[0].threshold, "models": [d.model for d in ds]})
    Path(args.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.output}: {len(rows)} rows, {len(KNOBS)} knobs")


if __name__ == "__main__":
    main()
