"""How sportsnet.ops finds its operator: prebuilt library, just-in-time build, or the reference.

Each case runs in a fresh interpreter that cannot import the prebuilt sportsnet._C."""
import json
import os
import shlex
import subprocess
import sys
import sysconfig

from sportsnet.ops import _build

SCRIPT = r"""
import importlib.abc, json, sys, warnings

class BlockPrebuilt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "sportsnet._C":
            raise ImportError("prebuilt library hidden by the test")

sys.meta_path.insert(0, BlockPrebuilt())
import torch
from sportsnet.ops import backend, fused_gradcam, gradcam_reference
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        chosen = backend()
    except RuntimeError as e:
        print(json.dumps({"error": str(e)}))
        raise SystemExit(0)
A, G = torch.rand(2, 8, 7, 7) + 0.01, torch.randn(2, 8, 7, 7)
err = (fused_gradcam(A, G, (20, 20)) - gradcam_reference(A, G, (20, 20))).abs().max().item()
print(json.dumps({"backend": chosen, "warnings": [str(w.message) for w in caught], "max_err": err,
                  "ops": hasattr(torch.ops.sportsnet, "fused_gradcam")}))
"""


def run(tmp_path, **env):
    # `make test` sets SPORTSNET_REQUIRE_EXT=1; each case here sets exactly what it tests.
    full = {k: v for k, v in os.environ.items() if k != "SPORTSNET_REQUIRE_EXT"}
    # One compiler at a time (ninja would start one per core and more): the suite's other work goes on beside it.
    # -O0: the path is what is tested here, not the kernels' speed (43 s at -O1, 27 s at -O0 alone on this 2-core host).
    full.update(TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"), MAX_JOBS="1", SPORTSNET_JIT_CFLAGS="-O0", **env)
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_without_the_prebuilt_library_csrc_is_compiled_just_in_time(tmp_path):
    out = run(tmp_path)
    assert out["backend"] == "compiled" and out["ops"] and out["warnings"] == []
    assert out["max_err"] < 1e-5
    assert any((tmp_path / "ext").rglob("*.so")), "the just-in-time build should be cached in TORCH_EXTENSIONS_DIR"


def test_if_compiling_fails_too_the_reference_is_used_with_one_warning(tmp_path):
    out = run(tmp_path, CXX="/bin/false")
    assert out["backend"] == "reference" and not out["ops"] and out["max_err"] == 0
    assert len(out["warnings"]) == 1
    assert "compiled operator is unavailable" in out["warnings"][0] and "just-in-time build" in out["warnings"][0]


def test_require_ext_turns_the_fallback_into_an_error(tmp_path):
    out = run(tmp_path, CXX="/bin/false", SPORTSNET_REQUIRE_EXT="1")
    assert "SPORTSNET_REQUIRE_EXT=1 forbids the reference fallback" in out["error"]


def test_our_compile_flags_undo_pythons_wrapv_when_they_follow_it():
    """setuptools compiles with Python's own CFLAGS first, then an extension's extra_compile_args (ours,
    from setup.py). CPython's carry -fwrapv, under which GCC compiled Grad-CAM++'s weight loops markedly
    slower than the just-in-time build (which has no Python CFLAGS): ours must undo it, so the two builds,
    and the benchmark's baseline build, generate the same code."""
    python_flags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + ["-fwrapv"]  # as CPython's builds have
    effective = python_flags + _build.CXX_FLAGS
    wrap = [f for f in effective if f in ("-fwrapv", "-fno-wrapv")]
    assert wrap[-1] == "-fno-wrapv"
    assert "-DNDEBUG" in _build.CXX_FLAGS  # CPython's CFLAGS define it; the just-in-time build must too
