#!/usr/bin/env bash
# The default pair's routing table, part 2 of 2: 800 MMLU-Pro questions (part 1 is the 200 GSM8K
# questions of data/gsm8k-qwen/). Both local models, 3 samples each at T=0.7, answer letter only.
# The instruction is the system turn (it replaces Qwen's default one and, the same for every
# question, is evaluated once per batch of 8 questions x 3 samples): this part is bound by prompt
# evaluation, and that cuts the tokens evaluated per question from 137.7 to 105.2 (mean of the 800).
# Resumable: rerun after an interruption and it continues from the journal.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f data/default-pair/mmlu_prompts.jsonl ] || python data/default-pair/make_prompts.py
hybridllm collect data/default-pair/mmlu_prompts.jsonl \
  --model qwen2.5-0.5b=qwen2.5-0.5b --model qwen2.5-1.5b=qwen2.5-1.5b \
  --samples 3 --batch 24 --temperature 0.7 --top-p 0.95 --max-tokens 8 --seed 0 \
  --system 'Reply with only the letter of the correct option.' \
  --output data/default-pair/mmlu.jsonl
hybridllm score data/default-pair/mmlu.jsonl --metric choice --output data/default-pair/mmlu_scored.jsonl
