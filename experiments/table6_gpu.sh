#!/usr/bin/env bash
# Table 6 and Figure 6 (experiments/table6.py: the full CIFAR-10 recipe for ResNet-20, ResNet-56, plain-20,
# plain-56, then ResNet-32, -44, -110) on one lent GPU machine, within a deadline, resumable across calls.
#
#   bash experiments/table6_gpu.sh WORKDIR [DEADLINE_SECONDS [--set=FIELD=VALUE ...]]
#
# Runs from the repository root. On the GPU machine (python3 with jax, flax, optax, orbax, matplotlib; no
# TensorFlow, tfds, clu or ml_collections) it needs, beside the checkout, two folders ignored by git and carried:
#   .whl/      the wheels of ml_collections and clu (pure Python), installed into /tmp/site when not importable
#   .gpudata/  cifar10_jpeg_bytes.npz (../shared/data), read by input_backend='device' without TensorFlow
# Batches are drawn on the GPU and steps_per_call is left to 'auto' (100 steps per compiled call there).
#
# Preparing the two folders here (Python 3.12 wheels, pure Python, about 0.3 MiB; the npz is 18 MiB):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl ml_collections==1.1.0 \
#       clu==0.0.12
#   mkdir -p .gpudata && cp ../shared/data/cifar10_jpeg_bytes.npz .gpudata/
# and the call of the lent machine (device `run`, carry [".whl", ".gpudata"] plus any resume.tar.gz of an earlier
# call placed in .gpudata/), leaving a minute of its 10-minute limit for packing and the transfer back:
#   bash experiments/table6_gpu.sh /tmp/table6 540 && cp /tmp/table6/*.tar.gz "$OUT"/
#   (with TABLE6_RESUME=.gpudata/resume.tar.gz in front when continuing)
#
# The sweep stops at DEADLINE_SECONDS (default 690) minus a reserve for packing: the run in progress gets SIGTERM,
# saves a checkpoint at the step it reached and exits (errors.Preempted). Then, in WORKDIR:
#   results.tar.gz  every run's metrics.jsonl, results.json, config.json and normalization.npz (the input
#                   statistics predict needs), sweep.json, and report/ (report.md,
#                   figure6.png) from python -m resnet_jax.report: what experiments/results/table6_gpu/ keeps
#   resume.tar.gz   every run's records and the newest checkpoint of each unfinished run (a few MiB each); pass it
#                   back as TABLE6_RESUME=FILE in a later call: finished runs are skipped, unfinished ones resume
# Environment: TABLE6_RUNS (comma-separated run names, default all, in table6.py's order), TABLE6_DATA (the npz),
# TABLE6_RESUME. Extra --set arguments go to the sweep (tests/test_experiments.py dry-runs this on a CPU with a
# few steps of small runs).
set -u
work=${1:?usage: table6_gpu.sh WORKDIR [DEADLINE_SECONDS [--set=FIELD=VALUE ...]]}
budget=${2:-690}
shift $(( $# < 2 ? $# : 2 ))
deadline=$(( $(date +%s) + budget ))
reserve=${TABLE6_RESERVE:-45}  # seconds kept for the preempted run's checkpoint, the report and the archives
mkdir -p "$work"
work=$(cd "$work" && pwd)
log="$work/log.txt"
export PYTHONUNBUFFERED=1
say() { echo "[table6 $(date -u +%H:%M:%S)] $*" | tee -a "$log"; }

if ! python3 -c "import clu, ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { say "cannot install .whl/*.whl (the wheels of ml_collections and clu)"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ -n "${TABLE6_RESUME:-}" ]]; then
  tar -xzf "$TABLE6_RESUME" -C "$work" || { say "cannot unpack TABLE6_RESUME=$TABLE6_RESUME"; exit 1; }
  say "unpacked $TABLE6_RESUME"
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee -a "$log"
python3 -c "import sys, jax, flax; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax',
flax.__version__, jax.devices())" 2>&1 | tee -a "$log"

data=${TABLE6_DATA:-.gpudata/cifar10_jpeg_bytes.npz}
runs=${TABLE6_RUNS:-resnet20,resnet56,plain20,plain56,resnet32,resnet44,resnet110}
left=$(( deadline - reserve - $(date +%s) ))
if (( left < 30 )); then say "no time left for training (${left} s)"; exit 1; fi
say "sweep of $runs for at most $left s"
timeout --signal=TERM --kill-after=$(( reserve / 2 )) "$left" \
  python3 -m resnet_jax.sweep experiments/table6.py --workdir="$work" --only="$runs" --set=input_backend=device \
  --set=data_file="$data" "$@" 2>&1 | tee -a "$log" | grep -E "^sweep:|rror|step [0-9]+/|resumed from"
rc=${PIPESTATUS[0]}
say "sweep exit status $rc (0: all runs finished; 75 or 124: stopped at the deadline, resumable)"

python3 -m resnet_jax.report "$work" --out="$work/report" >> "$log" 2>&1 || say "report failed (see $log)"
# The runs' records (no checkpoints), and the unfinished runs with their newest checkpoint.
(cd "$work" && find . -maxdepth 2 \( -name metrics.jsonl -o -name results.json -o -name config.json \
  -o -name normalization.npz -o -name sweep.json -o -path ./report \) -print0 | sort -z | tar -czf results.tar.gz --null -T - log.txt)
# What the next call needs to go on: every run's records (a finished run is then skipped, not run again) and the
# newest checkpoint of each unfinished run.
members=() unfinished=()
for dir in "$work"/*/; do
  name=$(basename "$dir")
  for f in metrics.jsonl results.json config.json normalization.npz; do
    [[ -f "$dir/$f" ]] && members+=("$name/$f")
  done
  [[ -d "$dir/checkpoints" ]] || continue
  python3 -c "import json, sys; r = json.load(open(sys.argv[1])); sys.exit(r['steps'] < r['config']['num_train_steps'])" \
    "$dir/results.json" 2>/dev/null && continue
  newest=$(ls "$dir/checkpoints" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
  [[ -n "$newest" ]] && members+=("$name/checkpoints/$newest") && unfinished+=("$name (step $newest)")
done
rm -f "$work/resume.tar.gz"
if (( ${#members[@]} )); then
  (cd "$work" && tar -czf resume.tar.gz "${members[@]}")
  say "resume.tar.gz: the records of every run; checkpoints of the unfinished ones: ${unfinished[*]:-none}"
fi
ls -la "$work"/*.tar.gz | tee -a "$log"
exit $(( rc == 0 || rc == 75 || rc == 124 ? 0 : rc ))
