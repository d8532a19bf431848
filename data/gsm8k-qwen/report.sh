#!/usr/bin/env bash
# After collect.sh: what the finished GSM8K table says. Per-model accuracy (stats), a router trained
# on 80 % and evaluated on the held-out 20 % (split by hashed id), and 5-fold cross-validation (every
# question scored by a router that did not see it: 40 test questions alone give a noisy curve).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=data/gsm8k-qwen
S=qwen2.5-0.5b
L=qwen2.5-1.5b
hybridllm stats $D/scored.jsonl --small $S --large $L --json $D/stats.json
hybridllm split $D/scored.jsonl --output-dir $D/split --into train=0.8,test=0.2 --salt gsm8k-qwen
hybridllm train $D/split/train.jsonl --small $S --large $L --output $D/router
hybridllm evaluate $D/router $D/split/test.jsonl --json $D/eval.json --plot $D/eval.png
hybridllm crossval $D/scored.jsonl --small $S --large $L --folds 5 --json $D/crossval.json --plot $D/crossval.png
