"""Writes data/default-pair/mmlu_prompts.jsonl: 800 MMLU-Pro questions for the default local pair,
picked by hashed id (salt "default-pair": a fixed draw, independent of any outcome) among the
questions of at most 300 characters, options included (3,152 of 12,032, 26 % of the set; all 14
categories remain), without the seven other models' outcomes that ../shared/data/mmlu_pro.jsonl carries.

Why the length cap: on 2 CPU cores this part is bound by prompt evaluation (about 44 tokens/s for
the 0.5B model and 21 for the 1.5B). The cap brings the mean question from 638 to 219 characters,
about 105 tokens evaluated per question with collect.sh's settings (120 at a 400-character cap, 139
at 600), roughly 1.8 hours for the 800 on both models. The router then sees long MMLU-Pro questions
(law, history, long engineering problems) far less often than they occur in the full set: of the
800, 195 are math and 7 law.

    python data/default-pair/make_prompts.py
"""

import json
from pathlib import Path

from hybridllm.tables.format import hash_fraction

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1].parent / "shared" / "data" / "mmlu_pro.jsonl"

MAX_CHARS = 300

rows = [r for r in map(json.loads, SRC.open()) if len(r["prompt"]) <= MAX_CHARS]
picked = sorted(rows, key=lambda r: hash_fraction(r["id"], "default-pair"))[:800]
with (HERE / "mmlu_prompts.jsonl").open("w") as fh:
    for r in picked:
        fh.write(json.dumps({k: r[k] for k in ("id", "prompt", "reference", "meta")}, ensure_ascii=False) + "\n")
print(f"wrote {len(picked)} prompts")
