#!/usr/bin/env bash
# Set up (idempotent) and run the main job: the paper's whole pipeline at quick scale on the
# bundled offline SmolLM2 (train, extract, analyze, steer, evaluate, report), ending in
# runs/quick/report.html. Extra arguments go to `welfare-lens reproduce` (e.g. --out DIR, or
# drop --quick by running .venv/bin/welfare-lens reproduce directly).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/welfare-lens reproduce --quick --out runs/quick "$@"
