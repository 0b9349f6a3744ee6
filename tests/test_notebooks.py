"""The notebooks as committed: no outputs, one parameters cell, the install cell first, an Open-in-Colab badge that
points at the notebook itself and is in the README. Executing them is CI's own step (python -m
tools.run_notebooks, make check-notebooks), outside the suite's time budget."""
import re
from pathlib import Path

import pytest

from tools import run_notebooks

nbformat = pytest.importorskip("nbformat", reason="nbformat (the test extra) reads the notebooks")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BADGE = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/(notebooks/[\w.-]+\.ipynb)")
INSTALL = re.compile(r'%pip install --no-build-isolation "sportsnet\[app\] @ git\+https://github\.com/([\w.-]+/[\w.-]+)"')


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "sports100.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs_with_parameters_and_install_first(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them before committing"
    assert [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])] == [1]
    install = INSTALL.search(code[0].source)
    assert install, f"{path.name}: the first code cell must be the install command of docs/install.md"
    badges = BADGE.findall(nb.cells[0].source)
    assert badges == [(install.group(1), f"notebooks/{path.name}")], badges  # the same repository as the install


def test_readme_badges_point_at_the_notebooks():
    readme = (ROOT / "README.md").read_text()
    linked = {target for _, target in BADGE.findall(readme)}
    assert linked == {f"notebooks/{p.name}" for p in NOTEBOOKS}
    # The command users paste is the one the notebooks run.
    docs = (ROOT / "docs" / "install.md").read_text()
    assert re.search(INSTALL.pattern.replace("%pip", "pip"), docs), "docs/install.md lacks the notebooks' command"


def test_parameters_are_injected_after_the_parameters_cell():
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    n = len(nb.cells)
    run_notebooks.inject(nb, {"QUICK": True, "WORK": "/tmp/x"})
    assert len(nb.cells) == n + 1 and "parameters" in nb.cells[2].metadata["tags"]
    assert nb.cells[3].source.splitlines()[1:] == ["QUICK = True", "WORK = '/tmp/x'"]
    nb.cells = [c for c in nb.cells if "parameters" not in c.metadata.get("tags", [])]
    with pytest.raises(ValueError, match="exactly one cell tagged 'parameters', found 0"):
        run_notebooks.inject(nb, {"QUICK": True})
