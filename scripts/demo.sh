#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job: the whole pipeline on the offline default
# (configs/pipeline/demo.yaml: MovieLens-100K from the recbole wheel, MiniLM embeddings, RQ-VAE
# semantic IDs, TIGER, a from-scratch LM recommender, SASRec, popularity) on the CPU, ending with
# the results table printed and written to checkpoints/demo/report.md. Finished stages are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python train.py pipeline --config configs/pipeline/demo.yaml "$@"
