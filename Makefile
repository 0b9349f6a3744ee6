# sportsnet: the README's commands.
#   make demo   - install (once) into .venv, then train VGG19 on the offline synthetic set
#   make test   - install (once) into .venv, then run the whole test suite
#
# TORCH picks the torch/torchvision pair. The default is the package registry's CUDA 13.0 build,
# which also runs on CPU-only machines. For another CUDA driver, e.g.:
#   make test TORCH="torch==2.13.0 torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cu126"
# Installs go through uv (bootstrapped into the venv): unlike pip, it never picks up a CPU-only torch
# wheel from a local find-links folder, with which torchvision's compiled ops fail to load.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0 torchvision==0.28.0
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.sportsnet-install
# Everything that decides what gets installed; a change reinstalls, otherwise install is a no-op.
INSTALL_KEY = $(shell cat setup.py pyproject.toml | sha256sum | cut -c1-16)|$(TORCH)

.PHONY: install demo test clean

install:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $(STAMP) 2>/dev/null)" = "$(INSTALL_KEY)" ]; then \
	  echo "sportsnet: environment $(VENV) is up to date"; \
	else \
	  set -e; \
	  $(PY) -m pip install --quiet --disable-pip-version-check uv; \
	  $(UV) pip install --python $(PY) $(TORCH) setuptools wheel ninja; \
	  $(UV) pip install --python $(PY) --no-build-isolation $(TORCH) -e ".[test]"; \
	  echo "$(INSTALL_KEY)" > $(STAMP); \
	fi

demo: install
	$(PY) experiments/train_vgg19.py

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
