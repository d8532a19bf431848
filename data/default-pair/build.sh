#!/usr/bin/env bash
# From the two scored collections to the router shipped in the package (run after data/collect_all.sh):
#   table.jsonl   = GSM8K (200, exact-match) + MMLU-Pro (800, choice), both local models, 3 samples each
#   stats.json    = per-model quality and oracle figures (stats_mmlu.json: MMLU-Pro part alone;
#                   the GSM8K part is data/gsm8k-qwen/stats.json)
#   split/        = train 80 % / test 20 % by hashed id (salt default-pair-split: make_prompts.py
#                   drew the MMLU-Pro questions as the lowest hashes under salt default-pair, so a
#                   split under that salt would put all of them in train)
#   src/hybridllm/routers/default = `hybridllm train` on train; evaluation on test in eval.json + plot,
#                   and per task (eval_gsm8k.json, eval_mmlu.json)
#   crossval.json = 5-fold cross-validation on the whole table (every question scored by a router
#                   that did not see it: less noisy than 200 held-out questions alone)
set -euo pipefail
cd "$(dirname "$0")/../.."
D=data/default-pair
S=qwen2.5-0.5b
L=qwen2.5-1.5b
R=src/hybridllm/routers/default
cat data/gsm8k-qwen/scored.jsonl $D/mmlu_scored.jsonl > $D/table.jsonl
hybridllm stats $D/table.jsonl --small $S --large $L --json $D/stats.json
hybridllm stats $D/mmlu_scored.jsonl --small $S --large $L --json $D/stats_mmlu.json
hybridllm split $D/table.jsonl --output-dir $D/split --into train=0.8,test=0.2 --salt default-pair-split
# --select apgr: the shipped router predates log-likelihood selection (the default since 2026-11-30);
# benchmarks/head_selection.py measures both on this table (cross-validated APGR 0.709 vs 0.738)
hybridllm train $D/split/train.jsonl --small $S --large $L --labels trans --select apgr --no-knn --output $R
hybridllm evaluate $R $D/split/test.jsonl --json $D/eval.json \
  --predictions $D/test_predictions.jsonl --plot docs/img/default_pair.png
grep '^{"id": "gsm8k-' $D/split/test.jsonl > $D/split/test_gsm8k.jsonl
grep '^{"id": "mmlu-pro-' $D/split/test.jsonl > $D/split/test_mmlu.jsonl
hybridllm evaluate $R $D/split/test_gsm8k.jsonl --json $D/eval_gsm8k.json
hybridllm evaluate $R $D/split/test_mmlu.jsonl --json $D/eval_mmlu.json
hybridllm crossval $D/table.jsonl --small $S --large $L --labels trans --folds 5 --select apgr --no-knn \
  --json $D/crossval.json --plot $D/crossval.png
