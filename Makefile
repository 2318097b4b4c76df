# `make test` on a fresh clone: creates .venv, installs the package with its test extras, runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CIFAR-10 for `make train`: a tfds data folder holding cifar10/; empty means tfds's own choice, $TFDS_DATA_DIR or
# else ~/tensorflow_datasets (a run without it says how to prepare it).
DATA_DIR ?=
PYTEST_ARGS ?=
# torch/torchvision builds that import together and lie on this project's machines (a CUDA build on x86_64 that
# runs on the CPU; a CPU build on aarch64); other releases would be downloaded (several GB).
TORCH_PINS ?= $(if $(filter aarch64,$(shell uname -m)),torch==2.9.1 torchvision==0.24.1,torch==2.14.1 torchvision==0.29.1)

.PHONY: install lint format test test-min test-slow test-peer train clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,onednn,torch,gcs,export]' $(TORCH_PINS)
	touch $@

# oneDNN's CPU convolutions as XLA FFI kernels (resnet_jax/cpu/onednn.py; config.cpu.convolutions='auto' uses them).
# Where they cannot be built (no g++, no oneDNN wheel for this platform) the install goes on without them and
# 'auto' uses XLA's convolutions; tests/test_cpu.py then fails with the reason.
resnet_jax/cpu/_onednn_conv.so: resnet_jax/cpu/csrc/onednn_conv.cc $(VENV)/.installed
	$(PY) -m resnet_jax.cpu.onednn build || echo "WARNING: oneDNN kernels not built; CPU runs use XLA's convolutions"

install: $(VENV)/.installed resnet_jax/cpu/_onednn_conv.so

# Lint (pyproject.toml's [tool.ruff]: unused or undefined names, one line length) and the formatter's check
# ([tool.pyink]); `make format` formats every file.
SOURCES := resnet_jax tests benchmarks configs experiments
lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/pyink --check --diff $(SOURCES)

format: install
	$(VENV)/bin/pyink $(SOURCES)

# Two pytest workers, one per core of this project's machines: with the training machinery in the workers' processes
# a third no longer finds idle time to fill, and its contention cost a tenth more CPU time (benchmarks/RESULTS.md,
# "Test suite time"). Whole files go to the workers in the order of tests/conftest.py (longest first); xdist would
# otherwise reorder them by their number of tests, which leaves the long one-test files for the end.
test: lint
	$(PY) -m pytest -q -m "not slow and not peer" -n 2 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The suite against the declared lower bounds (requirements-min.txt), in its own environment.
test-min:
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --upgrade pip
	.venv-min/bin/python -m pip install --quiet -e '.[test,onednn,torch,gcs,export]' $(TORCH_PINS) -c requirements-min.txt
	.venv-min/bin/python -m resnet_jax.cpu.onednn build
	.venv-min/bin/python -m pytest -q -m "not slow and not peer" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Timed comparisons with the PyTorch peer (benchmarks/torch_peer.py).
test-peer: install
	$(PY) -m pytest -q -m peer $(PYTEST_ARGS)

# The main job: the paper's CIFAR-10 ResNet-20 recipe (override any field with ARGS=...; DATA_DIR=DIR for the data).
train: install
	$(PY) -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 $(if $(DATA_DIR),--config.data_dir=$(DATA_DIR)) $(ARGS)

clean:
	rm -rf $(VENV) .venv-min build *.egg-info resnet_jax/cpu/_onednn_conv.so
