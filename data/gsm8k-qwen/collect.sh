#!/usr/bin/env bash
# Produces data/gsm8k-qwen/table.jsonl (then scored.jsonl) from the first 200 GSM8K test questions with
# the two default local models. Resumable: rerun after an interruption and it continues from
# table.jsonl.journal.jsonl (the journal refuses to resume under different settings).
set -euo pipefail
cd "$(dirname "$0")/../.."
hybridllm collect ../shared/data/gsm8k/test.jsonl --limit 200 \
  --model qwen2.5-0.5b=qwen2.5-0.5b --model qwen2.5-1.5b=qwen2.5-1.5b \
  --samples 3 --batch 6 --temperature 0.7 --top-p 0.95 --max-tokens 384 --seed 0 \
  --template $'Solve the following math problem step by step. At the end, write the final answer as "#### <number>".\n\n{prompt}' \
  --output data/gsm8k-qwen/table.jsonl
hybridllm score data/gsm8k-qwen/table.jsonl --metric exact-match --output data/gsm8k-qwen/scored.jsonl
