"""Writes data/default-pair/mmlu_prompts.jsonl: 800 MMLU-Pro questions for the default local pair,
picked by hashed id (salt "default-pair": a fixed, unbiased draw across all 14 categories), without
the seven other models' outcomes that ../shared/data/mmlu_pro.jsonl carries.

    python data/default-pair/make_prompts.py
"""

import json
from pathlib import Path

from hybridllm.table import hash_fraction

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1].parent / "shared" / "data" / "mmlu_pro.jsonl"

rows = [json.loads(line) for line in SRC.open()]
picked = sorted(rows, key=lambda r: hash_fraction(r["id"], "default-pair"))[:800]
with (HERE / "mmlu_prompts.jsonl").open("w") as fh:
    for r in picked:
        fh.write(json.dumps({k: r[k] for k in ("id", "prompt", "reference", "meta")}, ensure_ascii=False) + "\n")
print(f"wrote {len(picked)} prompts")
