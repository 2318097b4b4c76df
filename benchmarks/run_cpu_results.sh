#!/usr/bin/env bash
# The CPU figures of benchmarks/RESULTS.md, one command each; JSON lines and logs go to $OUT (default /tmp).
#   bash benchmarks/run_cpu_results.sh [OUT]
#   ONLY=peer bash benchmarks/run_cpu_results.sh [OUT]    (only the runs whose name matches)
# About 20 minutes on the 2-core sandbox. PyTorch must be installed for the peer comparisons
# (`make install` installs it).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/resnet_jax_cpu_results}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/tfds}
export TF_CPP_MIN_LOG_LEVEL=2
B="$PY -m resnet_jax.benchmark --json"
ONLY=${ONLY:-.}  # a regular expression: run only the figures whose name matches
run() {  # name, command...
  local name=$1; shift
  [[ $name =~ $ONLY ]] || return 0
  echo "== $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg)): $*" | tee -a "$OUT/commands.txt"
  "$@" > "$OUT/$name.json" 2> "$OUT/$name.log" || echo "   FAILED (see $OUT/$name.log)"
}

# benchmark --json: the paper's CIFAR nets at batch 128 on real CIFAR-10 (input pipeline timed on it too).
run cifar20       $B --config=configs/cifar20.py --config.data_dir=$DATA --steps=5 --windows=3
run cifar56       $B --config=configs/cifar56.py --config.data_dir=$DATA --steps=3 --windows=3
# ResNet-1202 (scanned, its config's default) and ResNet-50 (fake ImageNet): small batches, few steps.
run cifar1202     $B --config=configs/cifar1202.py --config.data_dir=$DATA --config.batch_size=16 \
                     --config.eval_batch_size=128 --steps=2 --windows=2 --warmup=1 --eval_steps=1 --input_steps=5
run resnet50      $B --config=configs/imagenet_resnet50.py --config.dataset=fake --config.fake_train_size=256 \
                     --config.fake_eval_size=32 --config.batch_size=16 --config.eval_batch_size=16 --steps=2 \
                     --windows=2 --warmup=1 --eval_steps=1 --input_steps=5
# bfloat16 compute (half_precision) on CPU.
run cifar20_bf16       $B --config=configs/cifar20.py --config.dataset=fake --config.half_precision=True \
                          --steps=5 --windows=3 --input_steps=0

# PyTorch peer, interleaved windows, batch 128 (ResNet-50: 32), our CPU defaults.
P="$PY benchmarks/torch_peer.py --json"
run peer_r20       $P --config=configs/cifar20.py --config.dataset=fake --steps=5 --windows=5
run peer_r56       $P --config=configs/cifar56.py --config.dataset=fake --steps=2 --windows=5
run peer_r50       $P --config=configs/imagenet_resnet50.py --config.dataset=fake --config.batch_size=32 --config.eval_batch_size=32 \
                      --steps=1 --windows=3 --warmup=1
echo "done: $OUT"
