#!/usr/bin/env bash
# Prepare what one GPU hold carries (git-ignored .whl/ and .carry/), from this checkout:
#   bash bench/hold/prepare.sh [OLD_COMMIT]
# - .whl/: the wheels the device image lacks (jsonargparse & co., gguf, liger-kernel, vector-quantize-pytorch; pytest for run.sh gputests)
# - .carry/gpu/: this folder (run.sh, scaling-{beauty,toys}.yaml)
# - .carry/datasets/: copies of ../shared/datasets/amazon_{beauty,toys,sports}_p5 (../shared does not travel)
# - .carry/sids/: the recipe's SID files, made here by `train.py tokenize` when missing (MiniLM is
#   an 83 MB wheel that cannot travel with the rest), and Beauty's cf embeddings (the LM's cf_init)
# - .carry/lmA and .carry/lmb/part: the SmolLM2 GGUF in two parts (98 MB; a call carries 64 MiB)
# - .carry/tok/: the SmolLM2 tokenizer alone (for run.sh decodeab)
# - .carry/old/: OLD_COMMIT's genrec/bench/configs, for a before/after in the same call (optional)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p .whl .carry/gpu .carry/datasets .carry/sids .carry/lmb
versions=$($PY -m pip list --format=freeze 2>/dev/null | grep -iE "^(jsonargparse|docstring.parser|typeshed.client|gguf|vector.quantize.pytorch|torch.einops.utils|einops|einx|loguru|frozendict|pytest|pluggy|iniconfig|pygments)==" || true)
(cd .whl && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
   --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
   -d . $versions liger-kernel==0.8.5) 2>&1 | grep -v "^WARNING" || true
cp bench/hold/run.sh bench/hold/scaling-beauty.yaml bench/hold/scaling-beauty-axes.yaml bench/hold/scaling-toys.yaml .carry/gpu/
for d in amazon_beauty_p5 amazon_toys_p5 amazon_sports_p5; do rm -rf .carry/datasets/$d; cp -r ../shared/datasets/$d .carry/datasets/; chmod -R u+w .carry/datasets/$d; done
sid() {  # sid DATA ENCODER NAME FILE [tokenize flags]
  local data=$1 encoder=$2 name=$3 file=$4; shift 4
  local made=checkpoints/amazon-$data/sids/$name.safetensors
  [ -f "$made" ] || $PY train.py tokenize --config configs/data/amazon-$data.yaml --config configs/encode/$encoder.yaml \
      --config configs/tokenizer/rqkmeans.yaml --tokenize.name "$name" "$@"
  cp "$made" .carry/sids/$file  # (not its tokenizer file: the shards give N_QT, and a call carries 64 MiB)
}
sid beauty minilm-cf minilm-cf-rqkmeans beauty-minilm-cf-rqkmeans.safetensors
sid toys minilm-cf minilm-cf3-rqkmeans toys-minilm-cf3-rqkmeans.safetensors --encoder.cf_weight 3
sid sports cf cf-rqkmeans sports-cf-rqkmeans.safetensors  # Sports has no item text
# The Beauty study's axes (bench/hold/scaling-beauty-axes.yaml; its SmolLM2 sweeps make theirs on the GPU)
sid beauty minilm minilm-rqkmeans beauty-minilm-rqkmeans.safetensors
sid beauty cf cf-rqkmeans beauty-cf-rqkmeans.safetensors
sid beauty minilm-cf minilm-cf-rqkmeans512 beauty-minilm-cf-rqkmeans512.safetensors --tokenizer.init_args.codebook_size 512
sid beauty minilm-cf minilm-cf-rqkmeans1024 beauty-minilm-cf-rqkmeans1024.safetensors --tokenizer.init_args.codebook_size 1024
sid beauty minilm-cf minilm-cf-rqkmeans4x256 beauty-minilm-cf-rqkmeans4x256.safetensors --tokenizer.init_args.levels 4
cf=$($PY train.py encode --config configs/data/amazon-beauty.yaml --config configs/encode/cf.yaml 2>/dev/null | sed -n 's/^embeddings: //p')
cp "$cf" .carry/sids/beauty-cf.safetensors  # the LM's cf_init
gguf=$($PY -c "from genrec.encode.gguf import resolve_model; import os; print(os.path.join(*resolve_model('smollm2')))")
head -c 48000000 "$gguf" > .carry/lmA && tail -c +48000001 "$gguf" > .carry/lmb/part
# The SmolLM2 tokenizer alone (3.4 MB), for `run.sh decodeab` (SmolLM2's shapes, random weights, no GGUF)
$PY -c "from genrec.models.lm_loading import load_tokenizer; load_tokenizer('smollm2').save_pretrained('.carry/tok')"
[ "$(cat .carry/lmA .carry/lmb/part | sha256sum | cut -c1-64)" = "$(sha256sum "$gguf" | cut -c1-64)" ]
if [ $# -ge 1 ]; then rm -rf .carry/old && mkdir -p .carry/old && git archive "$1" genrec bench configs train.py pyproject.toml | tar -x -C .carry/old; fi
du -sh .whl .carry/*
