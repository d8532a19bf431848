#!/usr/bin/env bash
# Every collection this repository ships, in dependency order; each step resumes where it stopped.
# Several CPU-hours on 2 cores: run it in the background, e.g.  nohup nice bash data/collect_all.sh &
set -euo pipefail
cd "$(dirname "$0")/.."
bash data/gsm8k-qwen/collect.sh
bash data/default-pair/collect.sh
