import os

import pytest

# Tests never download anything: huggingface_hub reads this once, at import, so set it first.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def results_dir(tmp_path):
    """An empty results folder that sportsnet.results writes to and reads from instead of benchmarks/results."""
    from sportsnet.results import use_results_dir

    with use_results_dir(tmp_path / "results") as folder:
        yield folder


# The files that take longest under `make test` (its --durations, docs/testing.md), longest first. pytest-xdist
# (--dist loadfile) hands whole files to the workers in collection order, so starting with these keeps one worker
# from running a long file alone at the end while the other idles (longest-processing-time-first). A stale list
# changes only the order, never what runs.
LONGEST_FIRST = (
    "tests/apps/test_pretrain_clip.py",
    "tests/apps/test_train_vgg19.py",
    "tests/apps/test_explain.py",
    "tests/ops/test_fused_loading.py",
    "tests/test_layering.py",
    "tests/apps/test_zero_shot_clip.py",
    "tests/apps/test_finetune_clip.py",
    "tests/tools/test_gpu_check.py",
    "tests/cam/test_zoo.py",
    "tests/apps/test_train.py",
    "tests/data/test_worker_skips.py",
    "tests/models/test_weights.py",
    "tests/engine/test_contrastive.py",
    "tests/ops/test_fused.py",
    "tests/engine/test_distributed.py",
    "tests/cam/test_methods.py",
    "tests/apps/test_explore.py",
    "tests/apps/test_entry_points.py",
    "tests/benchmarks/test_tables.py",
    "tests/ops/test_cuda_archs.py",
    "tests/test_hardware.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))  # stable: others keep
