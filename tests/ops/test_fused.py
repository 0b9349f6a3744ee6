"""sportsnet.ops.fused_gradcam: the compiled operator against the reference, the reference against
the formulas, edge cases, torch.library.opcheck, torch.compile, and bad input. CUDA tests run where
CUDA is present."""
import itertools
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sportsnet.ops import METHODS, backend, fused_gradcam, gradcam_reference
from sportsnet.ops.fused import has_kernel
from tests.support import ROOT
from tests.support.op_bounds import assert_within_bound

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]
SHAPES = [(b, k, h, w) for b in (1, 3) for k in (1, 64, 512) for h, w in ((1, 1), (7, 7), (14, 14), (13, 9))]
SIZES = ["same", (224, 224), (100, 37), (5, 5)]
# Inputs are exact in every dtype's float conversion; differences come from float32 summation order
# over up to 512 channels (measured worst on the CPU kernels: 2.4e-5 on maps normalised to [0, 1]).
# Other devices are held to tests.support.op_bounds, a bound from the arithmetic.
ATOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")


@pytest.fixture(autouse=True, scope="module")
def loaded_operator():
    """torch.ops.sportsnet.* exists once the backend is loaded (sportsnet.ops loads it lazily)."""
    return backend()


def make_inputs(shape, dtype, layout, device="cpu", seed=0):
    """Fresh random inputs, never zeros: activations positive (post-ReLU feature maps), gradients signed.

    ``strided`` is a view with both a channel step and transposed spatial strides."""
    g = torch.Generator().manual_seed(seed)
    b, k, h, w = shape
    if layout == "strided":
        A = (torch.rand(b, 2 * k, w, h, generator=g) + 0.01)[:, ::2].transpose(2, 3)
        G = torch.randn(b, 2 * k, w, h, generator=g)[:, ::2].transpose(2, 3)
    else:
        A, G = torch.rand(shape, generator=g) + 0.01, torch.randn(shape, generator=g)
    A, G = A.to(device=device, dtype=dtype), G.to(device=device, dtype=dtype)
    if layout == "channels_last":
        A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
    if layout == "strided" and k > 1 and h > 1 and w > 1:  # size-1 dimensions make any view "contiguous"
        assert not A.is_contiguous() and not A.is_contiguous(memory_format=torch.channels_last)
    return A, G


def check_against_reference(methods, dtypes, layouts, shapes=SHAPES, sizes=SIZES, device="cpu"):
    """Compiled op on ``device`` (into a NaN-poisoned ``out``, so unwritten pixels show) vs the reference on CPU."""
    for method, dtype, layout in itertools.product(methods, dtypes, layouts):
        for seed, (shape, size) in enumerate(itertools.product(shapes, sizes)):
            A, G = make_inputs(shape, dtype, layout, device, seed)
            hw = shape[2:] if size == "same" else size
            out = torch.full((shape[0], *hw), float("nan"),
                             dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
            got = fused_gradcam(A, G, hw, method=method, out=out)
            assert got is out
            expected = gradcam_reference(A.cpu(), G.cpu(), hw, method=method)
            where = f"{method} {dtype} {layout} {shape} -> {hw}"
            assert torch.isfinite(got).all(), f"unwritten or non-finite pixels: {where}"
            if device == "cpu":
                torch.testing.assert_close(got, expected, atol=ATOL[dtype], rtol=0, msg=lambda m: f"{where}: {m}")
            else:  # another summation order (FMA contraction): the tolerance from the arithmetic, not the CPU's
                assert_within_bound(got, A, G, hw, method, where=where)


def test_the_compiled_operator_is_in_use():
    assert backend() == "compiled", "the extension did not build or load (see the warning above)"
    assert has_kernel("CPU")
    from sportsnet.ops import fused

    assert fused._KERNEL_DEVICES == ({"cpu", "cuda"} if has_kernel("CUDA") else {"cpu"})


@pytest.mark.skipif(shutil.which("nvcc") is None or torch.version.cuda is None,
                    reason="no nvcc or a CPU-only torch: the CUDA kernel is not built here")
def test_the_cuda_kernel_is_compiled_and_registered():
    backend()
    assert has_kernel("CUDA"), "setup.py should have built csrc/cuda/fused_gradcam.cu into sportsnet._C"
    from sportsnet.ops import fused

    assert "cuda" in fused._KERNEL_DEVICES  # so CUDA inputs go to the kernel, not the fallback


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_compiled_matches_reference(method, dtype, layout):
    check_against_reference([method], [dtype], [layout])


def test_baseline_isa_build_matches_reference_too():
    """The CPU kernel also exists for the baseline ISA (the AVX2 one is picked on this machine)."""
    code = ("import torch; import tests.ops.test_fused as t; "
            "t.check_against_reference(t.METHODS, [torch.float32, torch.bfloat16], t.LAYOUTS, "
            "shapes=[(3, 64, 7, 7), (1, 512, 13, 9)], sizes=['same', (100, 37)])")
    env = dict(os.environ, SPORTSNET_CPU_ISA="default")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def literal_cam(A, G, size, method, normalize=True, eps=1e-7):
    """The formulas in float64, one map and one channel at a time (no vectorised reductions)."""
    A, G = A.double(), G.double()
    B, K, h, w = A.shape
    maps = []
    for b in range(B):
        cam = torch.zeros(h, w, dtype=torch.float64)
        for k in range(K):
            a, g = A[b, k], G[b, k]
            if method == "gradcam":
                cam += g.sum() / (h * w) * a
            elif method == "gradcam++":
                alpha = torch.zeros_like(g)
                nz = g != 0
                alpha[nz] = g[nz] ** 2 / (2 * g[nz] ** 2 + a.sum() * g[nz] ** 3 + 1e-6)
                cam += (alpha * torch.clamp(g, min=0)).sum() * a
            elif method == "xgradcam":
                cam += (a * g).sum() / (a.sum() + eps) * a
            elif method == "hirescam":
                cam += g * a
            elif method == "layercam":
                cam += torch.clamp(g, min=0) * a
            else:  # gradcam-elementwise
                cam += torch.clamp(g * a, min=0)
        maps.append(torch.clamp(cam, min=0))
    resized = F.interpolate(torch.stack(maps)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if not normalize:
        return resized
    out = []
    for m in resized:
        lo, hi = m.min(), m.max()
        flat = hi - lo <= 1e-5 * max(abs(lo), abs(hi))
        out.append(torch.zeros_like(m) if flat else (m - lo) / (hi - lo + eps * max(abs(lo), abs(hi))))
    return torch.stack(out)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_matches_the_formulas(method, normalize):
    for shape, size in [((2, 5, 7, 7), (224, 224)), ((1, 3, 13, 9), (100, 37)), ((2, 4, 6, 6), (4, 3))]:
        A, G = make_inputs(shape, torch.float64, "contiguous", seed=sum(shape))
        expected = literal_cam(A, G, size, method, normalize)
        torch.testing.assert_close(gradcam_reference(A, G, size, method=method, normalize=normalize), expected,
                                   atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(fused_gradcam(A, G, size, method=method, normalize=normalize), expected,
                                   atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("op", [fused_gradcam, gradcam_reference], ids=["compiled", "reference"])
@pytest.mark.parametrize("method", METHODS)
def test_degenerate_maps_give_zeros_not_nan(op, method):
    b, k, h, w = 2, 8, 7, 7
    constant = op(torch.ones(b, k, h, w), torch.full((b, k, h, w), 0.3), (20, 20), method=method)
    negative = op(torch.rand(b, k, h, w) + 0.1, -torch.rand(b, k, h, w) - 0.1, (20, 20), method=method)
    no_grad = op(torch.rand(b, k, h, w) + 0.1, torch.zeros(b, k, h, w), (20, 20), method=method)
    one_pixel = op(torch.rand(3, 16, 1, 1) + 0.1, torch.rand(3, 16, 1, 1) + 0.1, (5, 5), method=method)
    for name, maps in [("constant", constant), ("all-negative", negative), ("zero gradients", no_grad),
                       ("1x1 map", one_pixel)]:
        assert torch.equal(maps, torch.zeros_like(maps)), name


def test_maps_are_in_unit_range_and_reach_both_ends():
    A, G = make_inputs((4, 64, 14, 14), torch.float32, "contiguous")
    maps = fused_gradcam(A, G, (224, 224))
    assert maps.shape == (4, 224, 224) and maps.dtype == torch.float32
    assert maps.min() == 0 and (maps.amax(dim=(1, 2)) > 0.999).all() and maps.max() <= 1


def test_float64_in_float64_out_and_raw_maps():
    A, G = make_inputs((2, 16, 7, 7), torch.float64, "contiguous")
    raw = fused_gradcam(A, G, (30, 30), normalize=False)
    assert raw.dtype == torch.float64 and raw.min() >= 0 and raw.max() > 0
    torch.testing.assert_close(raw, gradcam_reference(A, G, (30, 30), normalize=False), atol=1e-12, rtol=1e-12)


def test_deterministic_and_batch_independent():
    A, G = make_inputs((3, 512, 14, 14), torch.float32, "contiguous")
    whole = fused_gradcam(A, G, (224, 224), method="gradcam++")
    assert torch.equal(whole, fused_gradcam(A, G, (224, 224), method="gradcam++"))
    single = fused_gradcam(A[1:2], G[1:2], (224, 224), method="gradcam++")
    # How the work is split (by batch or by channel blocks) depends on the batch size and the thread count, and
    # with it the order of the float32 sum over the 512 channels: up to K * eps apart on maps in [0, 1] (5e-6
    # held on 2 threads, not on 1).
    torch.testing.assert_close(single[0], whole[1], atol=A.shape[1] * torch.finfo(torch.float32).eps, rtol=0)


def test_empty_batch():
    out = fused_gradcam(torch.rand(0, 4, 7, 7), torch.rand(0, 4, 7, 7), (10, 12))
    assert out.shape == (0, 10, 12)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_opcheck(method):
    A, G = make_inputs((2, 8, 7, 5), torch.float32, "contiguous")
    op = torch.ops.sportsnet.fused_gradcam
    torch.library.opcheck(op.default, (A, G, [11, 9]), {"method": method, "normalize": True, "eps": 1e-7})
    out = torch.empty(2, 11, 9)
    torch.library.opcheck(op.out, (A, G, [11, 9]), {"method": method, "normalize": False, "eps": 1e-7, "out": out})


def test_torch_compile_fullgraph_traces_the_operator():
    def explain(A, G):
        return fused_gradcam(A.relu(), G * 2.0, (32, 32), method="gradcam++") * 0.5

    A, G = make_inputs((2, 16, 7, 7), torch.float32, "contiguous")
    compiled = torch.compile(explain, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(A, G), explain(A, G), atol=0, rtol=0)


@pytest.mark.parametrize("call", ["wrapper", "dispatcher"])
@pytest.mark.parametrize("args, message", [
    ((torch.rand(2, 3, 4), torch.rand(2, 3, 4), (8, 8)), r"activations must be 4-D \(B, K, h, w\)"),
    ((torch.rand(2, 3, 4, 4), torch.rand(2, 5, 4, 4), (8, 8)),
     r"activations \(2, 3, 4, 4\)|activations \[2, 3, 4, 4\]"),
    ((torch.ones(1, 2, 3, 3, dtype=torch.int64), torch.ones(1, 2, 3, 3, dtype=torch.int64), (8, 8)),
     "must be float32, float16, bfloat16 or float64"),
    ((torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3), (0, 8)), r"size must be two positive integers"),
    ((torch.rand(1, 2, 3, 3), torch.rand(1, 2, 3, 3, device="meta"), (8, 8)), "must be on the same device"),
    ((torch.rand(1, 2, 0, 3), torch.rand(1, 2, 0, 3), (8, 8)), "activation maps are empty"),
])
def test_bad_input_is_named(call, args, message):
    if call == "dispatcher" and args[1].is_meta:
        return  # a meta tensor routes the dispatcher to the fake kernel; CUDA + CPU is the real case (GPU only)
    if call == "wrapper":
        with pytest.raises((ValueError, TypeError), match=message):
            fused_gradcam(*args)
    else:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.sportsnet.fused_gradcam(args[0], args[1], list(args[2]))


def test_unknown_method_and_bad_out_are_named():
    A, G = make_inputs((1, 2, 3, 3), torch.float32, "contiguous")
    with pytest.raises(ValueError, match=r"unknown method 'gradcam\+'; expected one of gradcam, gradcam\+\+"):
        fused_gradcam(A, G, (4, 4), method="gradcam+")
    with pytest.raises(RuntimeError, match="unknown method 'grad'"):
        torch.ops.sportsnet.fused_gradcam(A, G, [4, 4], "grad")
    with pytest.raises(RuntimeError, match=r"out must have shape \(1, 4, 4\)"):
        fused_gradcam(A, G, (4, 4), out=torch.empty(1, 4, 5))
    with pytest.raises(RuntimeError, match="out must be Float for Float inputs, got Double"):
        fused_gradcam(A, G, (4, 4), out=torch.empty(1, 4, 4, dtype=torch.float64))


@CUDA
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype, layout):
    check_against_reference(METHODS, [dtype], [layout], device="cuda")


@CUDA
def test_cuda_runs_on_the_current_stream_and_passes_opcheck():
    """The kernel is ordered on the caller's current stream: its input is written on a side stream
    that a sleep holds back, and its output is read back on that stream alone. A kernel launched on
    any other stream would read the input before it is written."""
    A, G = make_inputs((4, 64, 14, 14), torch.float32, "contiguous", device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())  # A and G are ready before side starts
    host = torch.empty(4, 224, 224, pin_memory=True)
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU cycles on side
        flipped = A.flip(-1)  # written on side, after the sleep
        maps = fused_gradcam(flipped, G, (224, 224))
        host.copy_(maps, non_blocking=True)
    side.synchronize()
    torch.testing.assert_close(host, gradcam_reference(A.cpu().flip(-1), G.cpu(), (224, 224)), atol=5e-5, rtol=0)
    torch.library.opcheck(torch.ops.sportsnet.fused_gradcam.default, (A, G, [32, 32]),
                          {"method": "xgradcam", "normalize": True, "eps": 1e-7})


@CUDA
def test_cuda_degenerate_maps_and_empty_batch():
    zeros = fused_gradcam(torch.ones(2, 8, 7, 7, device="cuda"), torch.zeros(2, 8, 7, 7, device="cuda"), (20, 20))
    assert torch.equal(zeros, torch.zeros_like(zeros))
    empty = fused_gradcam(torch.rand(0, 4, 7, 7, device="cuda"), torch.rand(0, 4, 7, 7, device="cuda"), (9, 9))
    assert empty.shape == (0, 9, 9)


def test_an_input_on_a_device_the_build_has_no_kernel_for_takes_the_reference(monkeypatch):
    """A build without a CUDA kernel (no nvcc at build time) given CUDA inputs: the reference, with one
    warning, or an error under SPORTSNET_REQUIRE_EXT=1. Simulated with CPU inputs and a build that
    lists no CPU kernel (the decision is the same for either device)."""
    from sportsnet.ops import fused

    monkeypatch.setattr(fused, "_KERNEL_DEVICES", frozenset({"cuda"}))
    monkeypatch.setattr(fused, "_warned_devices", set())
    A, G = make_inputs((2, 8, 7, 7), torch.float32, "contiguous")
    monkeypatch.setenv("SPORTSNET_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError,
                       match=r"no CPU kernel \(it was built with kernels for \['cuda'\].*forbids the reference"):
        fused_gradcam(A, G, (20, 20))
    monkeypatch.delenv("SPORTSNET_REQUIRE_EXT")
    with pytest.warns(RuntimeWarning, match="no CPU kernel .*cpu inputs use the pure-PyTorch reference"):
        maps = fused_gradcam(A, G, (20, 20))
    assert torch.equal(maps, gradcam_reference(A, G, (20, 20)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per device type
        fused_gradcam(A, G, (20, 20))
    # Traced by torch.compile, the fallback is decided without a warning or state change (which
    # would break the graph), even before the first eager warning.
    monkeypatch.setattr(fused, "_warned_devices", set())
    compiled = torch.compile(fused_gradcam, fullgraph=True, backend="eager")
    assert torch.equal(compiled(A, G, (20, 20)), maps)


# ----------------------------------------------------------------------------- non-finite values
# The contract (csrc/fused_gradcam.h, gradcam_reference): NaN and inf are never hidden. Raw maps hold
# them where IEEE arithmetic puts them; a normalised map whose unresized map has any is NaN everywhere.

def poisoned(case: str, layout: str, device="cpu"):
    """Inputs of 3 maps, only the middle one (index 1) touched by ``case``."""
    A, G = make_inputs((3, 33, 7, 7), torch.float32, "contiguous", seed=5)
    if case == "nan gradient":
        G[1, 4, 2, 3] = float("nan")
    elif case == "inf gradient":  # an fp16 overflow
        G[1, 4, 2, 3] = float("inf")
    elif case == "-inf gradient":
        G[1, 4, :, :] = -float("inf")
    elif case == "nan activation":
        A[1, 0, 6, 6] = float("nan")
    elif case == "zero channel":  # xgradcam with eps=0: 0/0 weight
        A[1, 7] = 0.0
    if layout == "channels_last":
        A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
    return A.to(device), G.to(device)


CASES = ["nan gradient", "inf gradient", "-inf gradient", "nan activation", "zero channel"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_inputs_give_the_references_nan_and_inf(case, method):
    for layout, normalize, eps, size in itertools.product(["contiguous", "channels_last"], [True, False],
                                                         [0.0, 1e-3], [(7, 7), (20, 13)]):
        A, G = poisoned(case, layout)
        got = fused_gradcam(A, G, size, method=method, normalize=normalize, eps=eps)
        expected = gradcam_reference(A, G, size, method=method, normalize=normalize, eps=eps)
        where = f"{case}, {method}, {layout}, normalize={normalize}, eps={eps}, {size}"
        both = torch.isfinite(got) & torch.isfinite(expected)
        torch.testing.assert_close(got[both], expected[both], atol=5e-5, rtol=1e-5, msg=lambda m: f"{where}: {m}")
        # Each map has a non-finite value exactly when the reference's has (raw maps: which neighbours a
        # resize spreads it to is arithmetic's choice; normalised maps: all NaN, identical).
        assert torch.equal((~torch.isfinite(got)).flatten(1).any(1), (~torch.isfinite(expected)).flatten(1).any(1))
        if normalize:
            assert torch.equal(torch.isnan(got), torch.isnan(expected)), where
        assert torch.isfinite(got[[0, 2]]).all(), f"a poisoned map leaked into its neighbours: {where}"
        bad = not torch.isfinite(gradcam_reference(A[1:2], G[1:2], (7, 7), method=method, normalize=False,
                                                   eps=eps)).all()
        if normalize:
            # The normalised map is all NaN exactly when its raw map has a non-finite value: never a
            # plausible-looking map made of the finite part.
            assert torch.isnan(got[1]).all() if bad else torch.isfinite(got[1]).all(), where


def test_xgradcam_with_eps_zero_and_a_dead_channel_is_nan_not_a_map_of_zeros():
    """The issue's trigger: an all-zero activation channel (common after a ReLU) makes 0/0 weights."""
    A, G = poisoned("zero channel", "contiguous")
    maps = fused_gradcam(A, G, (32, 32), method="xgradcam", eps=0.0)
    assert torch.isnan(maps[1]).all() and torch.isfinite(maps[0]).all()
    assert torch.isfinite(fused_gradcam(A, G, (32, 32), method="xgradcam", eps=1e-7)).all()  # the default eps


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_gradcampp_channel_whose_activation_sum_overflows(device):
    """Finite activations whose channel sum overflows float32: the reference's alpha is 0 where G = 0,
    so that channel's weight is 0 and the maps are finite; 0 / (inf * 0) must not turn them into NaN."""
    A, G = make_inputs((2, 8, 7, 7), torch.float32, "contiguous", seed=9)
    A[1, 3] = 3e38
    G[1, 3, :3] = 0.0
    for normalize in (True, False):
        expected = gradcam_reference(A, G, (20, 20), method="gradcam++", normalize=normalize)
        got = fused_gradcam(A.to(device), G.to(device), (20, 20), method="gradcam++", normalize=normalize)
        assert torch.isfinite(expected).all() and torch.isfinite(got).all(), normalize
        torch.testing.assert_close(got.cpu(), expected, atol=5e-5, rtol=1e-5)


@CUDA
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_inputs_on_cuda_match_the_reference(method):
    for case, normalize in itertools.product(CASES, [True, False]):
        A, G = poisoned(case, "contiguous", "cuda")
        got = fused_gradcam(A, G, (20, 13), method=method, normalize=normalize, eps=0.0)
        expected = gradcam_reference(A.cpu(), G.cpu(), (20, 13), method=method, normalize=normalize, eps=0.0)
        bad = (~torch.isfinite(got.cpu())).flatten(1).any(1)
        assert torch.equal(bad, (~torch.isfinite(expected)).flatten(1).any(1)), (case, normalize)
        if normalize:
            assert torch.equal(torch.isnan(got.cpu()), torch.isnan(expected)), (case, normalize)
