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
