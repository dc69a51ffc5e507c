#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job on the offline default (MovieLens-100K).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python train.py data --config configs/data/movielens-100k.yaml "$@"
