#!/usr/bin/env bash
# The GPU measurements of issue 5, in one call of a lent GPU machine (python3 with jax, flax, optax, orbax and
# torch; no TensorFlow, tfds, clu or ml_collections). Run from the repository root:
#
#   bash benchmarks/gpu_run.sh OUT_DIR [DEADLINE_SECONDS]
#
# Needs, beside the checkout (both ignored by git, see benchmarks/RESULTS.md "GPU"):
#   .whl/      the wheels of ml_collections and clu (pure Python), installed into /tmp/site
#   .gpudata/  cifar10_jpeg_bytes.npz (../shared/data), read by input_backend='device' without TensorFlow
# Each measurement is one process with its own time limit, so one failure costs only itself; every JSON result is
# appended to OUT_DIR/results.jsonl, stderr to OUT_DIR/log.txt, and a table is printed at the end.
# ONLY="name ..." runs only the named measurements.
set -u
out=${1:?usage: gpu_run.sh OUT_DIR [DEADLINE_SECONDS]}
deadline=$(( $(date +%s) + ${2:-400} ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import sys, jax, flax, optax, torch; print('python', sys.version.split()[0], 'jax', jax.__version__,
'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
nproc

cifar="--config.input_backend=device --config.data_file=.gpudata/cifar10_jpeg_bytes.npz"
fake50="--config=configs/imagenet_resnet50.py --config.dataset=fake --config.batch_size=256 --config.eval_batch_size=256"

run() {  # run NAME CAP_SECONDS COMMAND...: one measurement, limited to CAP and to the deadline
  local name=$1 cap=$2; shift 2
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return; fi
  local left=$(( deadline - $(date +%s) ))
  (( left < cap )) && cap=$left
  if (( cap < 30 )); then echo "$name: skipped (deadline)"; return; fi
  local t0; t0=$(date +%s)
  echo "=== $name (limit ${cap}s): $*" >> "$out/log.txt"
  timeout "$cap" "$@" > "$out/$name.tmp" 2>> "$out/log.txt"
  local rc=$?
  if [[ $rc == 0 ]]; then
    python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); r['name']=sys.argv[2]; print(json.dumps(r))" \
      "$out/$name.tmp" "$name" >> "$out/results.jsonl"
  fi
  rm -f "$out/$name.tmp"
  echo "$name: rc=$rc in $(( $(date +%s) - t0 )) s"
  [[ $rc == 0 ]] || tail -n 5 "$out/log.txt"
}

bench="python3 -m resnet_jax.benchmark --json"
run r50_bf16_b256 150 $bench $fake50 --config.half_precision=True --steps 20 --windows 5 --warmup 3 \
  --eval_steps 5 --input_steps 0
# CIFAR: batches drawn on the GPU, config.steps_per_call auto (100 steps per compiled call), and K=1 beside it.
run r56_f32_b128 110 $bench --config=configs/cifar56.py $cifar --steps 300 --windows 5 --warmup 100 --eval_steps 10 \
  --input_steps 200
run r56_f32_b128_k1 90 $bench --config=configs/cifar56.py $cifar --config.steps_per_call=1 --steps 100 --windows 5 \
  --warmup 5 --eval_steps 0 --input_steps 0
XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 run peer_r50_bf16_b256 120 python3 benchmarks/torch_peer.py --json $fake50 \
  --config.half_precision=True --torch_device=cuda --channels_last --steps 10 --windows 5 --warmup 3
run r56_bf16_b128 100 $bench --config=configs/cifar56.py $cifar --config.half_precision=True --steps 300 \
  --windows 5 --warmup 100 --eval_steps 10 --input_steps 0
XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 run peer_r56_f32_b128 100 python3 benchmarks/torch_peer.py --json \
  --config=configs/cifar56.py --torch_device=cuda --channels_last --steps 50 --windows 5 --warmup 5
run r50_f32_b256 120 $bench $fake50 --steps 10 --windows 5 --warmup 3 --eval_steps 0 --input_steps 0

python3 benchmarks/summarize_gpu_results.py "$out/results.jsonl"
