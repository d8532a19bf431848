#!/usr/bin/env bash
# The default pair's routing table, part 2 of 2: 800 MMLU-Pro questions (part 1 is the 200 GSM8K
# questions of data/gsm8k-qwen/). Both local models, 3 samples each at T=0.7, answer letter only.
# Resumable: rerun after an interruption and it continues from the journal.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f data/default-pair/mmlu_prompts.jsonl ] || python data/default-pair/make_prompts.py
hybridllm collect data/default-pair/mmlu_prompts.jsonl \
  --model qwen2.5-0.5b=qwen2.5-0.5b --model qwen2.5-1.5b=qwen2.5-1.5b \
  --samples 3 --batch 6 --temperature 0.7 --top-p 0.95 --max-tokens 8 --seed 0 \
  --template $'{prompt}\n\nReply with only the letter of the correct option.' \
  --output data/default-pair/mmlu.jsonl
hybridllm score data/default-pair/mmlu.jsonl --metric choice --output data/default-pair/mmlu_scored.jsonl
