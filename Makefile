# `make test` on a fresh clone: creates .venv, installs the package with its test extras, runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data/tfds
PYTEST_ARGS ?=

.PHONY: install test test-slow test-peer train clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,onednn]'
	touch $@

# oneDNN's CPU convolutions as XLA FFI kernels (resnet_jax/onednn.py; config.cpu_convolutions='auto' uses them).
# Where they cannot be built (no g++, no oneDNN wheel for this platform) the install goes on without them and
# 'auto' uses XLA's convolutions; tests/test_onednn.py then fails with the reason.
resnet_jax/_onednn_conv.so: resnet_jax/csrc/onednn_conv.cc $(VENV)/.installed
	$(PY) -m resnet_jax.onednn build || echo "WARNING: oneDNN kernels not built; CPU runs use XLA's convolutions"

install: $(VENV)/.installed resnet_jax/_onednn_conv.so

test: install
	$(PY) -m pytest -q -m "not slow and not peer" $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# PyTorch is only a peer for benchmarks/torch_peer.py (a CPU wheel of 2.13.0 is on this project's machines).
test-peer: install
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pytest -q -m peer $(PYTEST_ARGS)

# The main job: the paper's CIFAR-10 ResNet-20 recipe on the shared data (override any field with ARGS=...).
train: install
	$(PY) -m resnet_jax.main --config=configs/cifar20.py --workdir=runs/cifar20 --config.data_dir=$(DATA_DIR) $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info resnet_jax/_onednn_conv.so
