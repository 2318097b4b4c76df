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
# and the call of the lent machine (device `run`, carry [".whl", ".gpudata"] plus any packed.tar.gz of an earlier
# call placed in .gpudata/), leaving a minute of its 10-minute limit for packing and the transfer back:
#   bash experiments/table6_gpu.sh /tmp/table6 540 && cp /tmp/table6/packed.tar.gz "$OUT"/
#   (with TABLE6_RESUME=.gpudata/packed.tar.gz in front when continuing)
#
# Long runs in pieces, as on any machine (resnet_jax/pieces.py, experiments/pieces.py): the sweep gets
# --stop_after=DEADLINE_SECONDS (default 690) minus a reserve for packing, so the run in progress stops at the end of
# its compiled call, saves a checkpoint there and exits 75, and no run starts after it. Then the workdir is packed
# (experiments/pieces.py pack) into WORKDIR/packed.tar.gz: every run's records (metrics.jsonl, results.json,
# config.json, normalization.npz, pieces.jsonl: which piece ran on which machine), sweep.json, log.txt, report/
# (report.md, figure6.png from python -m resnet_jax.report), and the newest checkpoint of each unfinished run. Pass
# it back as TABLE6_RESUME=FILE in a later call (unpacked into the fresh WORKDIR: finished runs are skipped,
# unfinished ones resume), and commit it unpacked: python experiments/pieces.py unpack packed.tar.gz
# experiments/results/table6_gpu (into an empty folder).
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
  python3 experiments/pieces.py unpack "$TABLE6_RESUME" "$work" || { say "cannot unpack TABLE6_RESUME=$TABLE6_RESUME"; exit 1; }
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
# --stop_after ends the sweep at the deadline with a checkpoint; the kill only guards against a hung process.
timeout --signal=KILL $(( left + reserve / 2 )) \
  python3 -m resnet_jax.sweep experiments/table6.py --workdir="$work" --only="$runs" --set=input_backend=device \
  --set=data_file="$data" --stop_after="${left}s" "$@" 2>&1 | tee -a "$log" | grep -E "^sweep:|rror|step [0-9]+/|resumed from"
rc=${PIPESTATUS[0]}
say "sweep exit status $rc (0: all runs finished; 75: stopped at the deadline, resumable)"

python3 -m resnet_jax.report "$work" --out="$work/report" >> "$log" 2>&1 || say "report failed (see $log)"
say "packing"
python3 experiments/pieces.py pack "$work" "$work/packed" --checkpoints=unfinished --include=log.txt \
  --include=report --archive="$work/packed.tar.gz" > "$work/pack.txt" 2>&1 || { cat "$work/pack.txt"; exit 1; }
cat "$work/pack.txt"
ls -la "$work"/packed.tar.gz
exit $(( rc == 0 || rc == 75 ? 0 : rc ))
