"""The paper's recipes, one config file per network (`configs/` at the repository root links here, and the wheel
installs them, so `--config=cifar56` works from an installed package as `--config=configs/cifar56.py` from a clone)."""
