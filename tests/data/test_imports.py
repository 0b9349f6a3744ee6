"""The import graph inside ``sportsnet.data`` has no cycle, counting imports inside functions too."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import sportsnet.data

PACKAGE = Path(sportsnet.data.__file__).resolve().parent


def _imports(module: str, source: str) -> set[str]:
    """Modules of ``sportsnet.data`` (other than the package itself) that ``module`` imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                bases = [node.module] if node.module else [alias.name for alias in node.names]
            elif node.level == 0 and (node.module or "").startswith("sportsnet.data."):
                bases = [node.module.removeprefix("sportsnet.data.")]
            elif node.level == 0 and node.module == "sportsnet.data":
                bases = [alias.name for alias in node.names]
            else:
                continue
        elif isinstance(node, ast.Import):
            bases = [a.name.removeprefix("sportsnet.data.") for a in node.names if a.name.startswith("sportsnet.data.")]
        else:
            continue
        found |= {b.split(".")[0] for b in bases if (PACKAGE / f"{b.split('.')[0]}.py").is_file()}
    return found - {module}


def import_graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p.stem, p.read_text()) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_function_level_and_absolute_imports_count_and_cycles_are_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert _imports("transforms", "def f():\n    from .batch_aug import X\n") == {"batch_aug"}
    assert _imports("transforms", "import sportsnet.data.images as im\nfrom . import cache\n") == {"images", "cache"}


def test_sportsnet_data_has_no_import_cycle():
    graph = import_graph()
    assert "normalization" in graph["batch_aug"] and "transforms" not in graph["batch_aug"], graph["batch_aug"]
    assert find_cycle(graph) is None, f"import cycle in sportsnet.data: {' -> '.join(find_cycle(graph))}"


def test_shared_names_are_importable_where_they_were():
    transforms = importlib.import_module("sportsnet.data.transforms")
    batch_aug = importlib.import_module("sportsnet.data.batch_aug")
    normalization = importlib.import_module("sportsnet.data.normalization")
    for name in ("IMAGENET_MEAN", "IMAGENET_STD", "EVAL_RESIZE_RATIO", "check_stats", "grayscale_stats"):
        assert getattr(transforms, name) is getattr(normalization, name) is getattr(batch_aug, name), name
    assert sportsnet.data.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert isinstance(transforms.build_transforms(True, 8, batched=True), batch_aug.BatchRandomResizedCrop)
