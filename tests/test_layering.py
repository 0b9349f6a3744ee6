"""The package's import graph: every module imports alone, no cycles, and each layer imports only from itself and
the layers below it (the reasons: docs/ARCHITECTURE.md). Imports inside functions count too."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sportsnet

PACKAGE = Path(sportsnet.__file__).resolve().parent
# Bottom up; a module may import from its own layer and the ones before it, never from a later one.
LAYERS = [
    ("sportsnet", "sportsnet.hardware", "sportsnet.serialization", "sportsnet.plotting", "sportsnet.results"),
    ("sportsnet.ops",),
    ("sportsnet.data",),
    ("sportsnet.models", "sportsnet.cam", "sportsnet.engine"),
    ("sportsnet.apps",),
]
# Side by side in one layer, knowing nothing of each other: models (what is trained), cam (explaining any
# model) and engine (training any model).
INDEPENDENT = ("sportsnet.models", "sportsnet.cam", "sportsnet.engine")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The sportsnet modules ``name`` imports (``from .x import y`` counts as x, or as x.y where y is a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # e.g. sportsnet.engine.fit.fit -> sportsnet.engine.fit
                t = t.rpartition(".")[0]
            if t and t.startswith("sportsnet") and t != name:
                found.add(t)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    best = None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[0]


def test_no_import_cycles():
    """Depth-first search; a back edge is a cycle (printed as the path that closes it)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(stack[stack.index(m):] + [m]))
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)
    assert cycles == []


def test_each_layer_imports_only_from_itself_and_below():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in sorted(targets) if layer(b) > layer(a)]
    assert upward == []


def package(name: str) -> str:
    return ".".join(name.split(".")[:2])


def test_models_cam_and_engine_do_not_import_one_another():
    across = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in sorted(targets)
              if package(a) in INDEPENDENT and package(b) in INDEPENDENT and package(a) != package(b)]
    assert across == []


#: The programs: what experiments/*.py run. A program never imports another to share its code (that lives in a
#: module for both: config, supervised, clip_data, runs); the ones that run others, listed here, import them
#: inside a function and call only their main.
PROGRAMS = {f"sportsnet.apps.{p}" for p in ("train_vgg19", "train", "explain", "zero_shot_clip", "finetune_clip",
                                             "pretrain_clip", "compare_backbones", "make_synthetic")}
RUNS_OTHERS = {"sportsnet.apps.compare_backbones": {"sportsnet.apps.train", "sportsnet.apps.train_vgg19",
                                                    "sportsnet.apps.explain"},
               "sportsnet.apps.zero_shot_clip": {"sportsnet.apps.pretrain_clip"}}


def test_programs_share_code_through_modules_for_both_not_through_each_other():
    wrong = []
    for name in sorted(PROGRAMS):
        tree = ast.parse(MODULES[name].read_text())
        top_level = {n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        for target in sorted(GRAPH[name] & PROGRAMS):
            if target not in RUNS_OTHERS.get(name, set()):
                wrong.append(f"{name} imports the program {target}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and node.module is None and node in top_level:
                ran = {f"sportsnet.apps.{a.name}" for a in node.names} & PROGRAMS
                wrong += [f"{name} imports {p} at the top (import it where it runs it)" for p in sorted(ran)]
            short = {p.rpartition(".")[2] for p in RUNS_OTHERS.get(name, ())}
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in short \
                    and node.attr != "main":
                wrong.append(f"{name} uses {node.value.id}.{node.attr} (only main: run it, share the rest)")
    assert wrong == []


#: The repository's tooling, run with python -m from the checkout and never installed: the library and its
#: programs cannot depend on it.
TOOLING = ("benchmarks", "tools")


def test_the_package_imports_nothing_from_the_tooling():
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            found += [f"{name} -> {t}" for t in targets if t.split(".")[0] in TOOLING]
    assert found == []
    assert not (PACKAGE / "apps" / "bench").exists() and not (PACKAGE / "apps" / "gpu_check.py").exists()


def test_the_walker_sees_relative_and_function_level_imports():
    """Guards the test itself: zero_shot_clip imports pretrain_clip inside a function (``from . import``)."""
    assert "sportsnet.apps.pretrain_clip" in GRAPH["sportsnet.apps.zero_shot_clip"]
    assert "sportsnet.engine.loop" in GRAPH["sportsnet.engine.fit"]
    assert layer("sportsnet.apps.explain") == 4 and layer("sportsnet.results") == 0


CHILD = """
import importlib, os, sys, traceback
# Third-party first, shared by the forked children (so each child costs a tenth of a second).
import numpy, PIL.Image, torch, torchvision, torchvision.transforms.v2, tqdm.auto
import matplotlib.figure, matplotlib.backends.backend_agg
from torch.utils.tensorboard import SummaryWriter
import open_clip
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:  # no sportsnet module is imported yet in this child
        try:
            importlib.import_module(name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("failed:", failed)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the check forks one child per module (POSIX only)")
def test_every_module_imports_alone():
    """Each module first, in a child with no other sportsnet module imported, so none can hide a missing
    import or an order that only works after another module (the heavy third-party imports are shared)."""
    result = subprocess.run([sys.executable, "-c", CHILD, *sorted(MODULES)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "failed: []" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
