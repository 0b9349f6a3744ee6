"""experiments/*.py are thin entry points into sportsnet.apps; the tooling (benchmarks/, tools/) runs with python -m
from the repository root; no file edits sys.path."""
import ast
import subprocess
import sys

import pytest

from tests.support import BENCHMARKS, EXPERIMENTS, ROOT

SCRIPTS = sorted(EXPERIMENTS.glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_script_only_imports_main_from_the_package_and_calls_it(script):
    body = ast.parse(script.read_text()).body
    docstring, imports, guard = body[0], body[1], body[-1]
    assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant) and len(body) == 3
    assert isinstance(imports, ast.ImportFrom) and imports.module.startswith("sportsnet.apps.")
    assert [a.name for a in imports.names] == ["main"]
    assert isinstance(guard, ast.If) and "__main__" in ast.unparse(guard.test) and "main()" in ast.unparse(guard)


def test_no_file_edits_sys_path_or_needs_e402():
    offenders = []
    for path in [*ROOT.glob("sportsnet/**/*.py"), *ROOT.glob("tests/**/*.py"), *SCRIPTS, *BENCHMARKS.glob("*.py"),
                 *ROOT.glob("tools/**/*.py")]:
        text = path.read_text()
        if path != ROOT / "tests" / "apps" / "test_entry_points.py" and (
                "sys.path.insert" in text or "sys.path[" in text or "sys.path.append" in text or "noqa: E402" in text):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_a_program_runs_from_its_script_and_as_a_module(tmp_path):
    for command in ([sys.executable, str(EXPERIMENTS / "make_synthetic.py")],
                    [sys.executable, "-m", "sportsnet.apps.make_synthetic"]):
        out = subprocess.run([*command, "--root", str(tmp_path / "syn"), "--num-classes", "2", "--train-per-class",
                              "2", "--eval-per-class", "1", "--size", "32"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0 and "2 classes, 32px" in out.stdout, out.stderr


# The others run so elsewhere: benchmarks.tables in tests/benchmarks/test_tables.py::
# test_the_tables_need_no_test_or_bench_extra, tools.gpu_check in tests/tools/test_gpu_check.py::
# test_the_result_file_is_written_after_every_step_and_kept_when_the_run_is_stopped.
@pytest.mark.parametrize("module", ["benchmarks.bench_gradcam"])
def test_the_tooling_runs_as_a_module_from_the_repository_root(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]
