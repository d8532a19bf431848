#!/usr/bin/env bash
# From the two scored collections to the router shipped in the package (run after data/collect_all.sh):
#   table.jsonl   = GSM8K (200, exact-match) + MMLU-Pro (800, choice), both local models, 3 samples each
#   split/        = train 80 % / test 20 % by hashed id (salt default-pair)
#   src/hybridllm/routers/default = `hybridllm train` on train; evaluation on test in eval.json + plot
set -euo pipefail
cd "$(dirname "$0")/../.."
D=data/default-pair
cat data/gsm8k-qwen/scored.jsonl $D/mmlu_scored.jsonl > $D/table.jsonl
hybridllm split $D/table.jsonl --output-dir $D/split --into train=0.8,test=0.2 --salt default-pair
hybridllm train $D/split/train.jsonl --small qwen2.5-0.5b --large qwen2.5-1.5b --labels trans \
  --output src/hybridllm/routers/default
hybridllm evaluate src/hybridllm/routers/default $D/split/test.jsonl --json $D/eval.json \
  --predictions $D/test_predictions.jsonl --plot docs/img/default_pair.png
