"""The benchmark CLI (resnet_jax/benchmark.py) and the PyTorch peer's model twin (benchmarks/torch_peer.py).

No timing thresholds here (benchmarks are not unit tests): these check that the tools run and report every
field, and that the PyTorch twin is the same network as ours. Figures live in benchmarks/RESULTS.md.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, SHARED_DATA, lower_train_on_batch, pad_as_flax_same, run_cli
from resnet_jax import config_lib, models, train
from resnet_jax.cpu import xla_options

# ResNet-8 (n=1, the smallest CIFAR net) keeps the compile short; the persistent cache of conftest.py makes
# reruns of the suite shorter still. Batches drawn on the device, two steps per call (the GPU recipe's path).
TINY = [
    "--config=configs/cifar20.py",
    "--config.model.depth=8",
    "--config.dataset=fake",
    "--config.batch_size=8",
    "--config.eval_batch_size=16",
    "--config.fake_train_size=64",
    "--config.fake_eval_size=32",
    "--config.input_backend=device",
    "--config.steps_per_call=2",
    "--steps=4",
    "--windows=2",
    "--warmup=1",
    "--eval_steps=1",
    "--input_steps=2",
    "--compilation_cache",
]
RESNET8_PARAMS = 75_290

FIELDS = {
    "params": int,
    "init_seconds": float,
    "train_lower_seconds": float,
    "train_compile_seconds": float,
    "train_lower_compile_seconds": float,
    "train_images_per_sec": float,
    "train_step_seconds": float,
    "train_window_images_per_sec": list,
    "train_cpu_seconds_per_step": float,
    "train_loss_first": float,
    "train_loss_last": float,
    "train_steps_per_call": int,
    "train_batches_drawn_on_devices": bool,
    "eval_images_per_sec": float,
    "eval_first_call_seconds": float,
    "input_images_per_sec": float,
    "input_source": str,
    "input_load_seconds": float,
    "peak_host_memory_bytes": int,
    "peak_device_memory_bytes": (int, type(None)),
    "train_step_flops": (float, type(None)),
    "train_flops_per_sec": (float, type(None)),
    "config": dict,
    "machine": dict,
    "settings": dict,
}
MACHINE = {
    "platform": str,
    "device_kind": str,
    "device_count": int,
    "local_device_count": int,
    "process_count": int,
    "cpu_count": int,
    "jax_version": str,
    "jaxlib_version": str,
    "flax_version": str,
    "python": str,
    "load_average_1min": float,
}


@pytest.fixture(scope="module")
def tiny_result():
  proc = run_cli("resnet_jax.benchmark", *TINY, "--json", timeout=300)
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stdout  # one JSON object and nothing else on stdout
  return json.loads(lines[0])


def test_cli_json_reports_every_field(tiny_result):
  r = tiny_result
  for key, kind in FIELDS.items():
    assert isinstance(r.get(key), kind), (key, r.get(key))
  for key, kind in MACHINE.items():
    assert isinstance(r["machine"].get(key), kind), (key, r["machine"].get(key))
  assert r["params"] == RESNET8_PARAMS
  assert r["config"]["batch_size"] == 8 and r["config"]["depth"] == 8 and r["config"]["dataset"] == "fake"
  assert r["config"]["steps_per_call"] == r["train_steps_per_call"] == 2 and r["train_batches_drawn_on_devices"]
  assert len(r["train_window_images_per_sec"]) == 2
  assert min(r["train_images_per_sec"], r["eval_images_per_sec"], r["input_images_per_sec"]) > 0
  assert r["train_lower_compile_seconds"] >= r["train_compile_seconds"] > 0
  assert r["peak_host_memory_bytes"] > 2**20
  assert r["machine"]["platform"] == "cpu" and r["peak_device_memory_bytes"] is None  # CPUs report none
  assert np.isfinite(r["train_loss_first"]) and np.isfinite(r["train_loss_last"])
  assert r["settings"]["compilation_cache"] is True
  # The CPU defaults are reported: oneDNN convolutions (one device, kernels built by `make install`), so no
  # weight-gradient chunks; XLA's Eigen convolutions for anything left to XLA. The cost analysis does not see the
  # oneDNN custom calls, so no FLOP figure rather than a wrong one.
  plan = r["config"]["cpu"]
  assert plan["convolutions"] == "onednn" and plan["weight_grad_chunk"] == 0 and plan["materialize_blocks"]
  assert r["train_step_flops"] is None and r["train_flops_per_sec"] is None
  assert plan["xla_compiler_options"] == xla_options._EIGEN_CONVOLUTIONS
  # The entry point applied host_malloc='auto' before JAX started (in the suite, GLIBC_TUNABLES of conftest.py
  # already asks for huge pages, so without a restart): JAX runs on this CPU alone.
  assert plan["host_malloc"] == "huge_pages", plan["host_malloc_reason"]


def test_table_format(tiny_result):
  from resnet_jax import benchmark

  text = benchmark.format_result(tiny_result)
  for label in ("compile train:", "train:", "eval:", "input pipeline:", "peak memory:", "machine:"):
    assert label in text
  assert "resnet8" in text and f"{RESNET8_PARAMS:,} params" in text


def test_input_rate_without_tensorflow_is_reported_not_fatal(monkeypatch):
  """On a machine without TensorFlow (the lent GPU machines) the tf.data input rate is n/a with the reason, and
  the train measurements made before it are kept; input_backend='device' needs no TensorFlow."""
  from resnet_jax import benchmark

  config = config_lib.resolve(config_lib.cifar(8))
  config.dataset, config.batch_size, config.fake_train_size, config.fake_eval_size = "fake", 8, 64, 32
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
  r = benchmark.input_pipeline_rate(config, steps=1, windows=1)
  assert r["input_images_per_sec"] is None
  assert "needs TensorFlow" in r["input_note"] and "input_backend=device" in r["input_note"]


def test_imagenet_preprocessing_rate_on_real_jpegs(tmp_path):
  """benchmarks/imagenet_preprocessing.py: one JSON line per (augmentation, thread count), counting the decoded and
  augmented images; a folder that does not exist is one line and exit status 2."""
  script = REPO / "benchmarks" / "imagenet_preprocessing.py"
  run = lambda *args: subprocess.run(
      [sys.executable, script, *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  proc = run(
      f"--jpeg_dir={SHARED_DATA / 'imagenet-sample'}", "--seconds=0.5", "--threads=1,2", "--augmentation=inception"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
  assert [(r["augmentation"], r["threads"]) for r in rows] == [("inception", 1), ("inception", 2)]
  assert all(r["images"] >= 32 and r["img_per_s"] > 0 and r["files"] >= 300 for r in rows), rows
  missing = run(f"--jpeg_dir={tmp_path / 'missing'}")
  assert missing.returncode == 2 and "Traceback" not in missing.stderr
  assert f"{tmp_path / 'missing'} is not a directory" in missing.stderr


def test_bucket_logging_trains_into_a_local_and_an_emulated_bucket_workdir():
  """benchmarks/bucket_logging.py: a JSON line for the local and the gs:// workdir (on its own fake-gcs-server), with
  every step logged and read back from where the run wrote it."""
  proc = subprocess.run(
      [sys.executable, REPO / "benchmarks" / "bucket_logging.py", "--steps=6"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
  assert [r["workdir"] for r in rows] == ["local", "gs"], rows
  assert all(r["logged_steps"] == 6 and r["median_img_per_s"] > 0 and r["wall_s"] > 0 for r in rows), rows


def test_gpu_results_table():
  """benchmarks/summarize_gpu_results.py on the recorded H100 run: every row, the peer ratio, the device."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import summarize_gpu_results

  rows = [json.loads(line) for line in open(REPO / "benchmarks/results/2026-11-27-gpu-h100.jsonl")]
  text = summarize_gpu_results.table(rows)
  assert "| r50_bf16_b256 | NVIDIA H100 80GB HBM3 | imagenet resnet50 | 256 | bf16 | 1 | 5304 |" in text
  assert "**1.16x**" in text and "25,557,032" in text and "jax 0.11.2" in text


def test_cli_names_a_bad_batch_size():
  """Two virtual CPU devices cannot share a batch of 7: a clear message and exit code 2, before compiling."""
  bad = run_cli("resnet_jax.benchmark", *TINY, "--config.batch_size=7", "--cpu_devices=2", check=False)
  assert bad.returncode == 2, bad.stderr[-2000:]
  assert "batch_size=7" in bad.stderr and "2 devices" in bad.stderr


def _compiled_train_step(config):
  import jax

  config = config_lib.resolve(config)
  tx, schedule = train.make_optimizer(config), train.make_schedule(config)
  steps = train.compile_steps(config, tx, schedule)
  shapes = train.abstract_host_state(steps.model, tx, config)  # all that compiling needs of the state
  if config.parallelism == "pmap":  # a copy per device along a leading axis, as CompiledSteps places it
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((jax.local_device_count(), *x.shape), x.dtype), shapes)
  else:
    state = steps.abstract_global(shapes)
  batch = {
      "image": np.zeros((config.batch_size, 32, 32, 3), np.float32),
      "label": np.zeros((config.batch_size,), np.int32),
  }
  return steps.compile(lower_train_on_batch(steps, state, batch, jax.random.key(0))).as_text()


def _convolutions(hlo: str):
  """(convolutions in the entry computation, convolutions anywhere) of an optimised HLO module."""
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  return entry.count(" convolution("), hlo.count(" convolution(")


def test_cpu_train_step_uses_eigen_convolutions():
  """cpu.convolutions='eigen' (and 'auto' where oneDNN does not apply): no convolution is handed to a library
  fusion (YNNPACK) on CPU, and weight gradients are computed over chunks of 8 examples."""
  config = config_lib.cifar(8)
  config.batch_size = 16
  config.cpu.convolutions = "eigen"
  top, total = _convolutions(_compiled_train_step(config))
  # ResNet-8: 7 convolutions; forward, input gradient (6: not the stem's) and 2 weight-gradient chunks each.
  assert top == total == 7 + 6 + 2 * 7
  config.parallelism = "pmap"  # jax.pmap takes no compiler options: CompiledSteps passes them at compile time
  top, total = _convolutions(_compiled_train_step(config))
  assert top == total == 7 + 6 + 2 * 7
  config.cpu.convolutions = "xla_default"
  top, total = _convolutions(_compiled_train_step(config))
  assert total == 7 + 6 + 2 * 7  # the same program; where XLA puts the convolutions is its own choice


def test_cpu_block_outputs_are_not_recomputed():
  """cpu.materialize_blocks (on for CPU): no fusion of the ResNet-32 train step reads more than 3 convolution
  outputs. Without it XLA's fusion recomputes a block's output from all earlier blocks of its stage inside each
  consumer (up to 7 convolution outputs per fusion here, 11 in ResNet-56): see cpu/kernels.materialize.
  """
  import re

  config = config_lib.cifar(32)
  config.batch_size = 16
  config.cpu.convolutions = "eigen"
  hlo = _compiled_train_step(config)
  convs = set(re.findall(r"%([\w.-]+) = \S+ convolution\(", hlo))
  entry = hlo[hlo.index("\nENTRY") :]
  widest = max(
      sum(op in convs for op in re.findall(r"%([\w.-]+)", line.split(" fusion(")[1].split(")")[0]))
      for line in entry.splitlines()
      if " fusion(" in line
  )
  assert len(convs) > 60 and widest <= 3, widest


def test_torch_twin_is_the_same_network():
  """The PyTorch twin of benchmarks/torch_peer.py, built from PyTorch's own layers (convolutions with padding=1,
  option A as strided slicing and zero channels): parameter shapes (hence counts) of ResNet-20 and ResNet-50 (v1,
  option B), and training-mode logits of CIFAR ResNet-20 and -56 equal to ours from the same parameters.

  Tolerance 1e-4 x max|logit|: float32 in both, another summation order (about 1e-6 relative here); a one-pixel
  shift of the stride-2 convolutions (flax's 'SAME') changes the logits by more than 1e-2 relative (checked).
  """
  import torch
  import jax

  sys.path.insert(0, str(REPO / "benchmarks"))
  import torch_peer
  from resnet_jax import config_lib

  for cfg, size, n in ((config_lib.cifar(20), 32, 269_722), (config_lib.imagenet(50), 224, 25_557_032)):
    net = torch_peer.build_torch_model(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == n
    params = jax.eval_shape(
        lambda: models.create_model(cfg.model).init(jax.random.key(0), jax.numpy.zeros((1, size, size, 3)))
    )["params"]
    torch_peer.copy_flax_params(net, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params))  # every shape
  x = np.random.default_rng(0).standard_normal((4, 32, 32, 3), dtype=np.float32)
  for depth in (20, 56):
    cfg = config_lib.cifar(depth)
    model = models.create_model(cfg.model)
    variables = model.init(jax.random.key(1), x)
    with jax.default_matmul_precision("highest"):
      ours, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    net = torch_peer.build_torch_model(cfg.model)
    assert all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    torch_peer.copy_flax_params(net, variables["params"])
    theirs = net.train()(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).detach().numpy()
    scale = np.abs(theirs).max()
    assert np.abs(np.asarray(ours) - theirs).max() <= 1e-4 * scale
    shifted = pad_as_flax_same(net)(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).detach().numpy()
    assert np.abs(shifted - theirs).max() > 1e-2 * scale


@pytest.mark.peer
def test_torch_peer_half_precision_checks_the_float32_function():
  """With half_precision both sides train in bfloat16 (PyTorch under autocast), and the function check still
  compares the float32 networks on the same parameters (bf16 roundings differ between the two frameworks)."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import torch_peer

  config = config_lib.cifar(8)
  config.dataset, config.batch_size, config.half_precision = "fake", 8, True
  r = torch_peer.compare(config_lib.resolve(config), steps=1, windows=1, warmup=1)
  assert r["torch_autocast_bf16"] and r["torch_device"] == "cpu" and r["torch_device_name"] is None
  assert r["check"]["params"] == RESNET8_PARAMS and r["check"]["max_abs_logit_diff"] < 1e-3
  assert r["jax_images_per_sec"] > 0 and r["torch_images_per_sec"] > 0


@pytest.mark.peer
def test_torch_peer_times_torch_compile_beside_eager():
  """--torch_compile adds a third contender, compiled from the same initial parameters, in the same rounds."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import torch_peer

  config = config_lib.cifar(8)
  config.dataset, config.batch_size = "fake", 8
  r = torch_peer.compare(config_lib.resolve(config), steps=1, windows=2, warmup=1, torch_compile=True)
  assert len(r["torch_compile_windows"]) == len(r["torch_windows"]) == len(r["jax_windows"]) == 2
  assert r["torch_compile_seconds"] > 0 and r["ratio_jax_over_torch_compile"] > 0


def test_steps_per_call_comparison_reports_kernel_time_and_faults():
  """--compare_steps_per_call's per-step CPU, system CPU and minor page faults (what explains the K>1 gain on CPU),
  in this process on ResNet-8."""
  from resnet_jax import benchmark

  config = config_lib.cifar(8)
  config.dataset, config.batch_size, config.input_backend = "fake", 8, "device"
  config.fake_train_size, config.fake_eval_size = 64, 32
  r = benchmark.compare_steps_per_call(config_lib.resolve(config), [1, 2], steps=4, windows=2, warmup=1)
  assert list(r["steps_per_call"]) == ["1", "2"]
  for x in r["steps_per_call"].values():
    assert len(x["train_window_images_per_sec"]) == 2 and x["train_images_per_sec"] > 0
    assert x["cpu_seconds_per_step"] > 0 and x["system_cpu_seconds_per_step"] >= 0 and x["minor_faults_per_step"] >= 0
  assert r["steps_per_call"]["1"]["ratio_to_first"] == 1.0
  assert "minor faults/step" in benchmark.format_comparison(r)


def test_step_profile_puts_every_convolution_flop_in_its_part():
  """benchmarks/profile_step.py on ResNet-8: the three convolution parts hold exactly the network's training FLOPs
  (forward and weight gradients of every convolution, input gradients of all but the stem: counted from the layer
  shapes here), and the parts' shares of the step add up to about the whole step."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import profile_step

  config = config_lib.cifar(8)
  config.dataset, config.batch_size = "fake", 8
  r = profile_step.breakdown(config_lib.resolve(config), calls=2, warmup=1, peak_gflops=100.0)
  # ResNet-8 on 32x32: stem 3->16 and three stages of one block; (out H*W, kernel, in, out) per convolution.
  convs = [(32 * 32, 9, 3, 16), (32 * 32, 9, 16, 16), (32 * 32, 9, 16, 16)]
  convs += [(16 * 16, 9, 16, 32), (16 * 16, 9, 32, 32), (8 * 8, 9, 32, 64), (8 * 8, 9, 64, 64)]
  forward = sum(2 * 8 * hw * k * cin * cout for hw, k, cin, cout in convs)
  backward_data = forward - 2 * 8 * 32 * 32 * 9 * 3 * 16
  parts = {row["part"]: row for row in r["parts"]}
  assert parts["convolution forward"]["gflop_per_step"] * 1e9 == pytest.approx(forward, rel=1e-9)
  assert parts["convolution backward-weights"]["gflop_per_step"] * 1e9 == pytest.approx(forward, rel=1e-9)
  assert parts["convolution backward-data"]["gflop_per_step"] * 1e9 == pytest.approx(backward_data, rel=1e-9)
  assert r["unmatched_event_ms_per_step"] == 0
  shares = sum(row["share_of_wall"] for row in r["parts"])
  overlap = r["two_operations_at_once_ms_per_step"] / r["wall_ms_per_step_profiled"]
  assert shares - overlap == pytest.approx(1.0, abs=0.02)
  assert "| convolution forward |" in profile_step.format_table(r)
  r["bandwidth_gbs"] = {"cache_8_mib": 150.0, "memory_256_mib": 35.0}
  assert "150 GB/s for 8 MiB arrays (in the cache), 35 GB/s for 256 MiB" in profile_step.format_table(r)


def test_memory_bandwidth_reports_its_result_and_rate():
  """benchmarks/memory_bandwidth.cc, as profile_step.py builds and runs it: its JSON line, y = 1.0001 x + 0.5 where
  x = 1 (the middle element), and a positive rate."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import profile_step

  r = profile_step._build_and_run("memory_bandwidth", [], 2, 0.05, 1)
  assert r["threads"] == 2 and r["mib"] == 1
  assert r["checksum"] == pytest.approx(1.0001 + 0.5, rel=1e-6)
  assert r["gbytes_per_second"] > 0


def test_onednn_verbose_summary_reads_convolution_lines():
  """benchmarks/onednn_verbose_summary.py: median ms and GFLOP/s per direction and shape, other lines ignored."""
  sys.path.insert(0, str(REPO / "benchmarks"))
  import onednn_verbose_summary

  shape = "mb128_ic16oc16_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1"
  line = "onednn_verbose,exec,cpu,convolution,brgconv:avx512_core,forward_training,src dst,attr ,alg:direct,{},{}"
  lines = [line.format(shape, ms) for ms in (3.0, 2.0, 4.0)]
  lines += ["onednn_verbose,exec,cpu,reorder,jit:uni,undef,src dst,,,128x16,0.1", "unrelated log line"]
  (row,) = onednn_verbose_summary.summarize(lines)
  assert row["direction"] == "forward_training" and row["calls"] == 3 and row["median_ms"] == 3.0
  assert row["gflops"] == pytest.approx(2 * 128 * 16 * 16 * 32 * 32 * 9 / 1e9 / 3.0e-3)
