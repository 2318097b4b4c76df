#!/bin/bash
# Side-by-side measurements on an otherwise idle machine: restart time with and without the compilation cache,
# and the loop's img/s with and without the one-queued-call bound (ResNet-20, real CIFAR-10).
cd /work/main
out=/tmp/meas/out; rm -rf $out; mkdir -p $out
common="--config=configs/cifar20.py --config.data_dir=../shared/data/tfds --config.eval_split=test[:1000] --config.log_every_steps=100 --config.eval_every_steps=1000 --config.checkpoint_every_steps=1000"
unset JAX_COMPILATION_CACHE_DIR
t() { local s=$(date +%s.%N); "$@" > /dev/null 2>&1; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
# A) restart: 4 steps from a fresh workdir: no cache, cold cache, warm cache (twice each, alternating).
for i in 1 2; do
  rm -rf $out/cache
  a=$(t .venv/bin/python -m resnet_jax.main $common --workdir=$out/a$i --config.num_train_steps=4 --config.log_every_steps=4 --config.eval_every_steps=4 --config.checkpoint_every_steps=4)
  b=$(t .venv/bin/python -m resnet_jax.main $common --workdir=$out/b$i --config.num_train_steps=4 --config.log_every_steps=4 --config.eval_every_steps=4 --config.checkpoint_every_steps=4 --config.compilation_cache_dir=$out/cache)
  c=$(t .venv/bin/python -m resnet_jax.main $common --workdir=$out/c$i --config.num_train_steps=4 --config.log_every_steps=4 --config.eval_every_steps=4 --config.checkpoint_every_steps=4 --config.compilation_cache_dir=$out/cache)
  echo "restart round $i: no cache $a s, cold cache $b s, warm cache $c s"
done
# B) loop img/s over 500 steps, with the bound (HEAD) and without (the block removed), alternating.
cp resnet_jax/train.py /tmp/meas/train_head.py
for i in 1 2; do
  for variant in bound free; do
    if [ $variant = free ]; then sed -i 's/^        jax.block_until_ready(previous)$/        pass/' resnet_jax/train.py; fi
    .venv/bin/python -m resnet_jax.main $common --workdir=$out/loop_${variant}_$i --config.num_train_steps=64000 --stop_after=75s > $out/loop_${variant}_$i.log 2>&1
    cp /tmp/meas/train_head.py resnet_jax/train.py
    echo "loop $variant round $i: $(grep -oE '[0-9]+ img/s' $out/loop_${variant}_$i.log | tail -n +2 | tr '\n' ' ')"
  done
done
git -C /work/main diff --stat resnet_jax/train.py
