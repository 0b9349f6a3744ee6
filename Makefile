# sportsnet: the README's commands.
#   make demo       - install (once) into .venv, then train VGG19 on the offline synthetic set
#   make demo-clip  - the offline CLIP demo: zero_shot_clip.py with no weights to download
#   make test       - install (once) into .venv, then ruff check and the whole test suite (two pytest-xdist
#                     workers: TEST_WORKERS)
#   make check-notebooks - every notebook in notebooks/ executed end to end on the synthetic set (CI's second step)
#   make check-install - pip install into a second environment reusing the installed torch, per build case (CI's third)
#   make bench      - the CPU benchmarks (GPU ones too where CUDA is present); JSON in benchmarks/results/,
#                     then the tables of the README and docs re-rendered from it. On a CPU with native bf16, the tables of
#                     a CPU without it come from
#                     make bench BENCH_ENV="ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"
#   make fewshot-table - the few-shot table of docs/clip.md: every few-shot method at 1/2/4/8/16 shots, both
#                     protocols, 3 seeds, on the offline CLIP demo (python -m benchmarks.fewshot), then re-rendered
#   make gpu-check  - the GPU acceptance run (python -m tools.gpu_check), within 7 minutes on one H100/H200, with
#                     no install step (no network needed): the extension built against the installed torch, the
#                     CUDA tests under SPORTSNET_REQUIRE_EXT=1, compute-sanitizer, kernel times, the four benchmarks
#                     with --device cuda, the tables; one JSON in benchmarks/results/gpu_check_<device>.json,
#                     rewritten after every step. On a CPU-only machine the CUDA steps are skipped, with the reason.
#                     GPU_PY is the venv's python where there is one, else python3 (make gpu-check GPU_PY=python3 on
#                     a machine whose own torch should be used); GPU_CHECK_ARGS passes flags (--steps, --budget,
#                     --arch-list, --copy-results DIR). docs/operator.md has the command for a lent GPU machine.
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
TEST_WORKERS ?= 2
DEMO_ARGS ?=
BENCH_ENV ?=
GPU_PY ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)
GPU_CHECK_ARGS ?=

PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.sportsnet-install
# Everything that decides what gets installed or compiled (the extension sources included); a change
# reinstalls (and rebuilds sportsnet._C), otherwise install is a no-op.
INSTALL_KEY = $(shell cat setup.py pyproject.toml sportsnet/ops/_build.py $$(find csrc -type f | sort) | sha256sum | cut -c1-16)|$(TORCH)

.PHONY: install demo demo-clip test check-notebooks check-install bench fewshot-table gpu-check clean

install:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(cat $(STAMP) 2>/dev/null)" = "$(INSTALL_KEY)" ]; then \
	  echo "sportsnet: environment $(VENV) is up to date"; \
	else \
	  set -e; \
	  $(PY) -m pip install --quiet --disable-pip-version-check uv; \
	  $(UV) pip install --python $(PY) $(TORCH) setuptools wheel ninja; \
	  SPORTSNET_REQUIRE_EXT=1 $(UV) pip install --python $(PY) --no-build-isolation $(TORCH) -e ".[test,bench,app]"; \
	  echo "$(INSTALL_KEY)" > $(STAMP); \
	fi

demo: install
	$(PY) experiments/train_vgg19.py $(DEMO_ARGS)

demo-clip: install
	$(PY) experiments/zero_shot_clip.py $(DEMO_ARGS)

# Lint and import order first (ruff, configured in pyproject.toml); then the suite, which must exercise
# the compiled operator: no silent fallback to the reference.
# TEST_WORKERS pytest-xdist processes, whole test files each (a file's shared fixtures run once): much of the
# suite is single-threaded (fresh interpreters importing torch, torchrun ranks), so two workers keep two cores
# busy. OMP_WAIT_POLICY=PASSIVE: OpenMP threads that wait sleep instead of spinning, so the two workers' thread
# pools share the cores instead of fighting for them. TEST_WORKERS=0 runs the suite in one process.
test: install
	$(VENV)/bin/ruff check .
	SPORTSNET_REQUIRE_EXT=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Every notebook executed end to end with its CI parameters (toy sizes; the real-data one on a synthetic tree),
# within 3 minutes together (tools/run_notebooks.py): a CI step of its own (.ci/run), outside the suite's budget.
check-notebooks: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m tools.run_notebooks

# pip install of this checkout into a second environment that reuses this one's torch (no index: nothing can be
# downloaded), with nvcc hidden (the C++ kernel only), without a compiler (no extension; the reference) and
# without one under SPORTSNET_REQUIRE_EXT=1 (the install must fail), each followed by a smoke test
# (tools/check_install.py; docs/install.md). CI's third step.
check-install: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m tools.check_install

# The benchmarks and the tables are packages of the repository (benchmarks/, tools/), not of the install: they
# run with python -m from the repository root.
bench: install
	$(BENCH_ENV) SPORTSNET_REQUIRE_EXT=1 $(PY) -m benchmarks.bench_gradcam
	$(BENCH_ENV) SPORTSNET_REQUIRE_EXT=1 $(PY) -m benchmarks.bench_explain
	$(BENCH_ENV) $(PY) -m benchmarks.bench_train
	$(BENCH_ENV) $(PY) -m benchmarks.bench_data
	$(PY) -m benchmarks.tables --update

fewshot-table: install
	OMP_WAIT_POLICY=PASSIVE $(PY) -m benchmarks.fewshot
	$(PY) -m benchmarks.tables --update docs/clip.md

# No `install` prerequisite: it runs with whatever torch GPU_PY has (python -m from the repository root needs no
# install), and builds the extension itself where it is missing.
gpu-check:
	$(GPU_PY) -m tools.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info sportsnet/*.so
