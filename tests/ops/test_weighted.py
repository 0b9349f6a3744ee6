"""sportsnet.ops.fused_weighted_cam: the compiled operator (CamMethod::Weighted in the fused kernels)
against the reference and the bound from the arithmetic, Grad-CAM reproduced from its weights, the
NaN/inf contract, torch.library.opcheck, torch.compile, bad input, and the fallback of a library
without the op. CUDA tests run where CUDA is present."""
import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch

from sportsnet.ops import backend, fused_gradcam, fused_weighted_cam, weighted_cam_reference
from sportsnet.ops.fused import has_kernel
from tests.ops.test_fused import ATOL, DTYPES, LAYOUTS, make_inputs
from tests.support import ROOT
from tests.support.op_bounds import assert_weighted_within_bound

KS = (1, 33, 512)
# (B, h, w) per channel count: 33 leaves a partial last chunk; 512 is VGG19's conv5_4.
SPATIAL = {1: (2, 13, 9), 33: (3, 7, 7), 512: (2, 14, 14)}
SIZES = ["same", (224, 224), (100, 37), (1, 5)]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")


@pytest.fixture(autouse=True, scope="module")
def loaded_operator():
    return backend()


def acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make_weighted(shape, dtype, layout, device="cpu", seed=0):
    """Activations as tests.ops.test_fused makes them (positive), signed weights (B, K) and a signed bias
    (B,) of the accumulation dtype, so the ReLU clips part of most maps. ``strided``: the weights and
    bias are strided views too."""
    A, _ = make_inputs(shape, dtype, layout, device, seed)
    B, K = shape[:2]
    g = torch.Generator().manual_seed(seed + 1000)
    acc = acc_dtype(dtype)
    if layout == "strided":  # views made last, so no copy makes them contiguous
        weights = (torch.randn(K, B, generator=g) / K ** 0.5).to(device=device, dtype=acc).t()
        bias = (torch.randn(2 * B, generator=g) * 0.3).to(device=device, dtype=acc)[::2]
        assert weights.stride() == (1, B) and bias.stride() == (2,)
    else:
        weights = (torch.randn(B, K, generator=g) / K ** 0.5).to(device=device, dtype=acc)
        bias = (torch.randn(B, generator=g) * 0.3).to(device=device, dtype=acc)
    return A, weights, bias


# (bias, normalize) pairs; check_against_reference rotates through them so each K meets all four and
# each size several, without the whole product (the test stays fast on a 2-core CPU).
VARIANTS = list(itertools.product([False, True], [True, False]))


def check_against_reference(dtype, layout, device="cpu", ks=KS, sizes=SIZES, rotate=0):
    """Every K x size, each with one (bias, normalize) variant in rotation: the op (into a NaN-poisoned
    out) vs the reference (on CPU: the CPU kernel's summation order) and vs the exact maps within the
    arithmetic's bound (float32/float64 on CPU; every dtype on other devices)."""
    for (i, k), (j, size) in itertools.product(enumerate(ks), enumerate(sizes)):
        with_bias, normalize = VARIANTS[(i + j + rotate) % len(VARIANTS)]
        b, h, w = SPATIAL[k]
        A, weights, bias = make_weighted((b, k, h, w), dtype, layout, device, seed=k + 7 * with_bias)
        bias = bias if with_bias else None
        hw = (h, w) if size == "same" else size
        out = torch.full((b, *hw), float("nan"), dtype=acc_dtype(dtype), device=device)
        got = fused_weighted_cam(A, weights, hw, bias=bias, normalize=normalize, out=out)
        assert got is out
        where = f"{dtype} {layout} K={k} bias={with_bias} normalize={normalize} -> {hw}"
        assert torch.isfinite(got).all(), f"unwritten or non-finite pixels: {where}"
        if device == "cpu":  # (a plain max difference: torch.testing's first call costs seconds in a subprocess)
            expected = weighted_cam_reference(A, weights, hw, bias=bias, normalize=normalize)
            assert got.shape == expected.shape and got.dtype == expected.dtype, where
            scale = 1.0 if normalize else max(1.0, expected.abs().max().item())
            diff = (got - expected).abs().max().item()
            assert diff <= ATOL[dtype] * scale, f"{where}: max difference {diff} > {ATOL[dtype] * scale}"
        if device != "cpu" or dtype in (torch.float32, torch.float64):  # fp16/bf16: the same float32 arithmetic
            assert_weighted_within_bound(got, A, weights, hw, bias, normalize, where=where)


def test_the_compiled_operator_has_the_weighted_op():
    assert backend() == "compiled"
    assert has_kernel("CPU", "fused_weighted_cam")
    from sportsnet.ops import fused

    assert fused._WEIGHTED_KERNEL_DEVICES == fused._KERNEL_DEVICES  # built from the same sources


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_matches_reference(dtype, layout):
    check_against_reference(dtype, layout, rotate=DTYPES.index(dtype) + LAYOUTS.index(layout))


def test_baseline_isa_build_matches_reference_too():
    code = ("import torch; import tests.ops.test_weighted as t; "
            "cases = [(torch.bfloat16, 'contiguous'), *((torch.float32, x) for x in t.LAYOUTS)]; "
            "[t.check_against_reference(d, x, ks=(33,), sizes=['same', (100, 37)], rotate=r) "
            "for r, (d, x) in enumerate(cases)]")
    env = dict(os.environ, SPORTSNET_CPU_ISA="default")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_weights_from_the_gradients_reproduce_gradcam_and_xgradcam(dtype, layout):
    A, G = make_inputs((3, 64, 14, 14), dtype, layout, seed=3)
    a, g = A.to(acc_dtype(dtype)), G.to(acc_dtype(dtype))
    weights = {"gradcam": g.mean((2, 3)), "xgradcam": (a * g).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)}
    for (method, w), normalize in itertools.product(weights.items(), [True, False]):
        got = fused_weighted_cam(A, w, (224, 224), normalize=normalize)
        expected = fused_gradcam(A, G, (224, 224), method=method, normalize=normalize)
        torch.testing.assert_close(got, expected, atol=ATOL[dtype], rtol=1e-5, msg=lambda m: f"{method}: {m}")


def test_no_bias_is_a_zero_bias_and_the_bias_shifts_the_map_before_the_relu():
    A, weights, bias = make_weighted((3, 33, 7, 7), torch.float32, "contiguous", seed=4)
    assert torch.equal(fused_weighted_cam(A, weights, (20, 20)),
                       fused_weighted_cam(A, weights, (20, 20), bias=torch.zeros(3)))
    raw = fused_weighted_cam(A, weights, (7, 7), normalize=False)
    shifted = fused_weighted_cam(A, weights, (7, 7), bias=bias, normalize=False)
    unclipped = torch.einsum("bk,bkhw->bhw", weights, A)
    torch.testing.assert_close(raw, unclipped.relu(), atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted, (unclipped + bias[:, None, None]).relu(), atol=1e-6, rtol=0)


def test_no_channels_leave_the_bias_alone():
    A, weights, bias = torch.rand(2, 0, 5, 5), torch.rand(2, 0), torch.tensor([0.5, -0.5])
    raw = fused_weighted_cam(A, weights, (9, 9), bias=bias, normalize=False)
    assert torch.equal(raw, torch.stack([torch.full((9, 9), 0.5), torch.zeros(9, 9)]))
    assert torch.equal(fused_weighted_cam(A, weights, (9, 9), bias=bias), torch.zeros(2, 9, 9))  # constant maps


def test_deterministic_batch_independent_and_empty_batch():
    A, weights, bias = make_weighted((4, 512, 14, 14), torch.float32, "contiguous", seed=5)
    whole = fused_weighted_cam(A, weights, (224, 224), bias=bias)
    assert torch.equal(whole, fused_weighted_cam(A, weights, (224, 224), bias=bias))
    assert torch.equal(fused_weighted_cam(A.flip(0), weights.flip(0), (224, 224), bias=bias.flip(0)).flip(0), whole)
    alone = fused_weighted_cam(A[1:2], weights[1:2], (224, 224), bias=bias[1:2])
    torch.testing.assert_close(alone[0], whole[1], atol=5e-6, rtol=0)
    assert fused_weighted_cam(torch.rand(0, 4, 7, 7), torch.rand(0, 4), (10, 12)).shape == (0, 10, 12)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_batch_past_the_grid_limit_reads_each_maps_weights_and_bias(device):
    """65537 maps (more than one CUDA grid axis holds, so the kernel goes in slices), with strided
    weights and bias: each map's own, on both sides of each slice boundary."""
    B = 65537
    g = torch.Generator().manual_seed(6)
    A = (torch.rand(B, 3, 2, 2, generator=g) + 0.01).to(device)
    weights = torch.randn(3, B, generator=g).to(device).t()
    bias = (torch.randn(2 * B, generator=g) * 0.3).to(device)[::2]
    assert weights.stride() == (1, B) and bias.stride() == (2,)
    got = fused_weighted_cam(A, weights, (3, 3), bias=bias, normalize=False)
    assert_weighted_within_bound(got, A, weights, (3, 3), bias, normalize=False, where="B=65537")
    for b in (0, 65534, 65535, 65536):
        alone = fused_weighted_cam(A[b:b + 1], weights[b:b + 1], (3, 3), bias=bias[b:b + 1], normalize=False)
        torch.testing.assert_close(got[b], alone[0], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- non-finite values
# The contract of fused_gradcam (csrc/fused_gradcam.h): NaN and inf are never hidden.

CASES = ["nan weight", "inf weight", "nan bias", "inf activation", "-inf activation", "inf activation, zero weight",
         "nan activation"]


def poisoned(case, layout, device="cpu"):
    """Inputs of 3 maps, only the middle one (index 1) touched by ``case``."""
    A, weights, bias = make_weighted((3, 33, 7, 7), torch.float32, "contiguous", seed=8)
    weights[1, 0] = 0.5
    if case == "nan weight":
        weights[1, 4] = float("nan")
    elif case == "inf weight":
        weights[1, 4] = float("inf")
    elif case == "nan bias":
        bias[1] = float("nan")
    elif case == "inf activation":  # a positive weight: +inf at one position
        A[1, 0, 2, 3] = float("inf")
    elif case == "-inf activation":  # -inf at one position, which the ReLU makes 0: a finite map
        A[1, 0, 2, 3] = -float("inf")
    elif case == "inf activation, zero weight":  # 0 * inf = NaN
        A[1, 0, 2, 3] = float("inf")
        weights[1, 0] = 0.0
    elif case == "nan activation":
        A[1, 0, 6, 6] = float("nan")
    if layout == "channels_last":
        A = A.contiguous(memory_format=torch.channels_last)
    return A.to(device), weights.to(device), bias.to(device)


def check_non_finite(case, layout, normalize, size, device="cpu"):
    A, weights, bias = poisoned(case, layout, device)
    got = fused_weighted_cam(A, weights, size, bias=bias, normalize=normalize).cpu()
    expected = weighted_cam_reference(A.cpu(), weights.cpu(), size, bias=bias.cpu(), normalize=normalize)
    where = f"{case}, {layout}, normalize={normalize}, {size}"
    both = torch.isfinite(got) & torch.isfinite(expected)
    torch.testing.assert_close(got[both], expected[both], atol=5e-5, rtol=1e-5, msg=lambda m: f"{where}: {m}")
    assert torch.equal((~torch.isfinite(got)).flatten(1).any(1), (~torch.isfinite(expected)).flatten(1).any(1)), where
    if normalize:
        assert torch.equal(torch.isnan(got), torch.isnan(expected)), where
    assert torch.isfinite(got[[0, 2]]).all(), f"a poisoned map leaked into its neighbours: {where}"
    bad = not torch.isfinite(weighted_cam_reference(A[1:2].cpu(), weights[1:2].cpu(), (7, 7), bias=bias[1:2].cpu(),
                                                    normalize=False)).all()
    assert bad == (case != "-inf activation"), where
    if normalize:  # all NaN exactly when the raw map has a non-finite value
        assert torch.isnan(got[1]).all() if bad else torch.isfinite(got[1]).all(), where


@pytest.mark.parametrize("case", CASES)
def test_non_finite_inputs_give_the_references_nan_and_inf(case):
    for layout, normalize, size in itertools.product(["contiguous", "channels_last"], [True, False],
                                                     [(7, 7), (20, 13)]):
        check_non_finite(case, layout, normalize, size)


def test_a_nan_weight_makes_the_normalised_map_all_nan():
    A, weights, bias = poisoned("nan weight", "contiguous")
    maps = fused_weighted_cam(A, weights, (32, 32))
    assert torch.isnan(maps[1]).all() and torch.isfinite(maps[[0, 2]]).all()


# ----------------------------------------------------------------------------- dispatcher, compile, errors

def test_opcheck_both_overloads():
    A, weights, bias = make_weighted((2, 8, 7, 5), torch.float32, "contiguous", seed=9)
    op = torch.ops.sportsnet.fused_weighted_cam
    torch.library.opcheck(op.default, (A, weights, bias, [11, 9]), {"normalize": True, "eps": 1e-7})
    torch.library.opcheck(op.default, (A, weights, None, [11, 9]), {"normalize": False, "eps": 1e-7},
                          test_utils=("test_schema", "test_faketensor"))
    out = torch.empty(2, 11, 9)
    torch.library.opcheck(op.out, (A, weights, None, [11, 9]), {"normalize": False, "eps": 1e-7, "out": out})


def test_torch_compile_fullgraph_traces_the_operator():
    def explain(A, weights, bias):
        return fused_weighted_cam(A.relu(), weights * 2.0, (32, 32), bias=bias - 0.1) * 0.5

    A, weights, bias = make_weighted((2, 16, 7, 7), torch.float32, "contiguous", seed=10)
    targets = []

    def recording(gm, example_inputs):
        targets.extend(node.target for node in gm.graph.nodes)
        return gm.forward

    torch.compile(explain, fullgraph=True, backend=recording)(A, weights, bias)
    assert torch.ops.sportsnet.fused_weighted_cam.default in targets  # the op, not the reference, is traced
    compiled = torch.compile(explain, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(A, weights, bias), explain(A, weights, bias), atol=0, rtol=0)


A4 = torch.rand(2, 3, 4, 4)
W23 = torch.rand(2, 3)
BAD = [
    ((torch.rand(2, 3, 4), W23, None, (8, 8)), {}, r"activations must be 4-D \(B, K, h, w\)"),
    ((A4, torch.rand(2, 4), None, (8, 8)), {}, r"weights must have shape \(B, K\) = \(2, 3\) for activations"),
    ((A4, torch.rand(6), None, (8, 8)), {}, r"weights must have shape \(B, K\) = \(2, 3\)"),
    ((A4, W23, torch.rand(3), (8, 8)), {}, r"bias must be None or a tensor of shape \(B,\) = \(2,\)"),
    ((A4, W23, torch.rand(2, 1), (8, 8)), {}, r"bias must be None or a tensor of shape \(B,\) = \(2,\)"),
    ((A4, W23.half(), None, (8, 8)), {},
     r"weights must be (torch\.float32|Float) \(the accumulation type of (torch\.float32|Float) activations\), "
     r"got (torch\.float16|Half)"),
    ((A4.half(), W23.half(), None, (8, 8)), {},
     r"weights must be (torch\.float32|Float) \(the accumulation type of (torch\.float16|Half) activations\)"),
    ((A4.double(), W23, None, (8, 8)), {}, r"weights must be (torch\.float64|Double)"),
    ((A4, W23, torch.rand(2).double(), (8, 8)), {}, r"bias must be (torch\.float32|Float) \(the accumulation"),
    ((A4.long(), W23, None, (8, 8)), {}, "activations must be float32, float16, bfloat16 or float64"),
    ((A4, W23, None, (0, 8)), {}, "size must be two positive integers"),
    ((torch.rand(2, 3, 0, 4), W23, None, (8, 8)), {}, "the activation maps are empty"),
    ((A4, W23, None, (8, 8)), {"eps": -1.0}, "eps must be finite and >= 0"),
    ((A4, torch.rand(2, 3, device="meta"), None, (8, 8)), {}, r"weights \(meta\) and activations \(cpu\) must be on "
                                                               "the same device"),
]


@pytest.mark.parametrize("call", ["wrapper", "dispatcher"])
@pytest.mark.parametrize("args, kwargs, message", BAD)
def test_bad_input_is_named(call, args, kwargs, message):
    A, weights, bias, size = args
    if call == "wrapper":
        with pytest.raises((ValueError, TypeError), match="fused_weighted_cam: " + message):
            fused_weighted_cam(A, weights, size, bias=bias, **kwargs)
    elif not weights.is_meta:  # a meta tensor routes the dispatcher to the fake kernel (CUDA + CPU: GPU test)
        with pytest.raises(RuntimeError, match="fused_weighted_cam: " + message):
            torch.ops.sportsnet.fused_weighted_cam(A, weights, bias, list(size), True, kwargs.get("eps", 1e-7))


def test_bad_out_is_named():
    op = torch.ops.sportsnet.fused_weighted_cam
    for out, message in [(torch.empty(2, 8, 9), r"out must have shape \(2, 8, 8\)"),
                         (torch.empty(2, 8, 8, dtype=torch.float64), "out must be Float for Float inputs, got Double"),
                         (torch.empty(2, 8, 16)[:, :, ::2], "out must be contiguous")]:
        with pytest.raises(RuntimeError, match="fused_weighted_cam: " + message):
            fused_weighted_cam(A4, W23, (8, 8), out=out)
        with pytest.raises(RuntimeError, match="fused_weighted_cam: " + message):
            op.out(A4, W23, None, [8, 8], out=out)


def test_a_library_without_the_op_takes_the_reference(monkeypatch):
    """A prebuilt library from before fused_weighted_cam (or without a kernel for the input's device):
    the reference, warned once, or an error under SPORTSNET_REQUIRE_EXT=1."""
    from sportsnet.ops import fused

    monkeypatch.setattr(fused, "_WEIGHTED_KERNEL_DEVICES", frozenset())
    monkeypatch.setattr(fused, "_warned_devices", set())
    A, weights, bias = make_weighted((2, 8, 7, 7), torch.float32, "contiguous", seed=11)
    monkeypatch.setenv("SPORTSNET_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match=r"fused_weighted_cam: the compiled operator has no CPU kernel.*forbids"):
        fused_weighted_cam(A, weights, (20, 20), bias=bias)
    monkeypatch.delenv("SPORTSNET_REQUIRE_EXT")
    with pytest.warns(RuntimeWarning, match="fused_weighted_cam: .*cpu inputs use the pure-PyTorch reference"):
        maps = fused_weighted_cam(A, weights, (20, 20), bias=bias)
    assert torch.equal(maps, weighted_cam_reference(A, weights, (20, 20), bias=bias))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per op and device type; fused_gradcam is unaffected
        fused_weighted_cam(A, weights, (20, 20), bias=bias)
        fused_gradcam(A, A, (20, 20))


# ----------------------------------------------------------------------------- CUDA

@CUDA
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_reference(dtype, layout):
    check_against_reference(dtype, layout, device="cuda")


@CUDA
@pytest.mark.parametrize("case", CASES)
def test_cuda_non_finite_inputs(case):
    for layout, normalize in itertools.product(["contiguous", "channels_last"], [True, False]):
        check_non_finite(case, layout, normalize, (20, 13), device="cuda")


@CUDA
def test_cuda_reproduces_gradcam_and_passes_opcheck():
    A, G = make_inputs((4, 512, 14, 14), torch.float32, "channels_last", device="cuda", seed=12)
    got = fused_weighted_cam(A, G.mean((2, 3)), (224, 224))
    torch.testing.assert_close(got, fused_gradcam(A, G, (224, 224)), atol=5e-5, rtol=0)
    _, weights, bias = make_weighted((2, 40, 7, 5), torch.float32, "contiguous", device="cuda", seed=13)
    op = torch.ops.sportsnet.fused_weighted_cam
    for b in (None, bias):
        torch.library.opcheck(op.default, (A[:2, :40, :7, :5], weights, b, [11, 9]), {"normalize": True, "eps": 1e-7})
        out = torch.empty(2, 11, 9, device="cuda")
        torch.library.opcheck(op.out, (A[:2, :40, :7, :5], weights, b, [11, 9]),
                              {"normalize": False, "eps": 1e-7, "out": out})


@CUDA
def test_cuda_error_paths_name_the_problem():
    A, weights, bias = make_weighted((2, 4, 3, 3), torch.float32, "contiguous", device="cuda")
    op = torch.ops.sportsnet.fused_weighted_cam
    with pytest.raises(ValueError, match=r"weights \(cpu\) and activations \(cuda:0\) must be on the same device"):
        fused_weighted_cam(A, weights.cpu(), (8, 8))
    with pytest.raises(RuntimeError, match=r"weights \(cpu\) and activations \(cuda:0\) must be on the same device"):
        op(A, weights.cpu(), None, [8, 8])
    with pytest.raises(RuntimeError, match=r"bias \(cpu\) and activations \(cuda:0\) must be on the same device"):
        op(A, weights, bias.cpu(), [8, 8])
    with pytest.raises(RuntimeError, match=r"weights \(cuda:0\) and activations \(cpu\) must be on the same device"):
        op(A.cpu(), weights, None, [8, 8])
    with pytest.raises(RuntimeError, match="fused_weighted_cam: out is on cpu but the inputs are on cuda"):
        op.out(A, weights, bias, [8, 8], out=torch.empty(2, 8, 8))
