#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the bundled offline model. Extra arguments go to
# `welfare-lens demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/welfare-lens demo "$@"
