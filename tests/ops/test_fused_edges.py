"""fused_gradcam at the edges of its input space, on every device present: channel counts that split
into several chunks with a partial last one, token views, mixed and expanded layouts, every method x
normalize x eps, batches past the CUDA grid limit, very tall outputs, unit sizes, degenerate maps,
determinism, error paths, opcheck of the out= overload, and CUDA-graph capture. Results are held to
tests.support.op_bounds (a bound from the arithmetic, valid for any summation order)."""
import itertools

import pytest
import torch

from sportsnet.cam.layouts import Layout
from sportsnet.ops import METHODS, backend, fused_gradcam, gradcam_reference
from tests.support.op_bounds import assert_within_bound

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.fixture(autouse=True, scope="module")
def loaded_operator():
    return backend()


def inputs(shape, device, seed=0, dtype=torch.float32):
    """Activations positive (post-ReLU), gradients signed."""
    g = torch.Generator().manual_seed(seed)
    A, G = torch.rand(shape, generator=g) + 0.01, torch.randn(shape, generator=g)
    return A.to(device=device, dtype=dtype), G.to(device=device, dtype=dtype)


def check(A, G, size, method, normalize=True, eps=1e-7, where=""):
    got = fused_gradcam(A, G, size, method=method, normalize=normalize, eps=eps)
    assert got.device == A.device
    assert_within_bound(got, A, G, size, method, normalize, eps, where=f"{where} {method}")
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("K", [2, 33, 100, 768, 2048])
def test_channel_counts_with_a_partial_last_chunk(device, layout, K):
    """Chunks of 8/16/32 channels; 33 and 100 leave a partial last chunk (invalid lanes in channels-last)."""
    for b, seed in ((1, 0), (3, 1)):
        A, G = inputs((b, K, 7, 5), device, seed)
        if layout == "channels_last":
            A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
        for method in METHODS:
            check(A, G, (20, 13), method, where=f"K={K} B={b} {layout}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_token_views(device, batch_first):
    """The explainer's view of a ViT's tokens (class token + 7x7 patches, width 48), batch-first or
    sequence-first: channel stride 1 with spatial strides of a sequence, read without a copy."""
    B, n, D = 3, 7, 48
    g = torch.Generator().manual_seed(7)
    tokens = torch.rand(B, 1 + n * n, D, generator=g).to(device)
    grads = torch.randn(B, 1 + n * n, D, generator=g).to(device)
    if not batch_first:
        tokens, grads = tokens.transpose(0, 1).contiguous(), grads.transpose(0, 1).contiguous()
    layout = Layout("BND" if batch_first else "NBD", prefix_tokens=1)
    A = layout.to_maps(tokens, "blocks.11", (224, 224))
    G = layout.to_maps(grads, "blocks.11", (224, 224))
    assert A.shape == (B, D, n, n) and A.stride(1) == 1 and A.data_ptr() != A.contiguous().data_ptr()
    for method in METHODS:
        got = check(A, G, (32, 32), method, where=f"tokens batch_first={batch_first}")
        torch.testing.assert_close(got, fused_gradcam(A.contiguous(), G.contiguous(), (32, 32), method=method),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_layouts_and_expanded_gradients(device):
    A, G = inputs((2, 40, 9, 6), device, 3)
    cases = {
        "A channels-last, G contiguous": (A.contiguous(memory_format=torch.channels_last), G),
        "G expanded over positions (stride 0)": (A, G.mean((2, 3), keepdim=True).expand_as(G)),
        "G expanded over the batch (stride 0)": (A, G[:1].expand_as(G)),
    }
    for where, (a, g) in cases.items():
        for method in METHODS:
            check(a, g, (17, 23), method, where=where)


@pytest.mark.parametrize("device", DEVICES)
def test_every_method_normalize_and_eps(device):
    for (shape, size), layout in itertools.product([((3, 64, 7, 7), (30, 20)), ((2, 33, 13, 9), (13, 9))],
                                                   ["contiguous", "channels_last"]):
        A, G = inputs(shape, device, sum(shape))
        if layout == "channels_last":
            A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
        for method, normalize, eps in itertools.product(METHODS, [True, False], [0.0, 1e-3]):
            check(A, G, size, method, normalize, eps, where=f"{shape}->{size} {layout} normalize={normalize} eps={eps}")


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_past_the_grid_limit(device):
    """65537 maps: more than CUDA's 65535 blocks along one grid axis, so the kernel goes in slices."""
    A, G = inputs((65537, 2, 2, 2), device, 11)
    for method in ("gradcam", "layercam"):
        got = check(A, G, (3, 3), method, where="B=65537")
        # The maps on both sides of each slice boundary are those computed alone.
        for b in (0, 65534, 65535, 65536):
            torch.testing.assert_close(got[b], fused_gradcam(A[b:b + 1], G[b:b + 1], (3, 3), method=method)[0],
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_a_very_tall_output(device):
    A, G = inputs((2, 4, 5, 2), device, 12)
    for method in ("gradcam", "hirescam"):
        check(A, G, (70000, 3), method, where="H=70000")


def test_an_output_taller_than_the_cpu_needs_no_limit():
    A, G = inputs((1, 3, 4, 1), "cpu", 13)
    check(A, G, (524281, 1), "gradcam", where="H=524281")


@CUDA
def test_an_output_taller_than_the_cuda_grid_is_a_clear_error():
    A, G = inputs((1, 3, 4, 1), "cuda", 13)
    with pytest.raises(RuntimeError, match=r"sizes too large.*output \(524281, 1\).*H <= 524280"):
        fused_gradcam(A, G, (524281, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_unit_sized_inputs_and_outputs(device):
    for (h, w), size in itertools.product([(1, 1), (1, 9), (9, 1), (5, 4)], [(1, 1), (1, 37), (37, 1), (6, 6)]):
        A, G = inputs((2, 24, h, w), device, h * 10 + w)
        for method in METHODS:
            check(A, G, size, method, where=f"{h}x{w}->{size}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_degenerate_maps_give_zeros(device, method):
    b, k, h, w = 2, 8, 7, 7
    cases = {
        "constant": (torch.ones(b, k, h, w), torch.full((b, k, h, w), 0.3)),
        "all-negative": (torch.rand(b, k, h, w) + 0.1, -torch.rand(b, k, h, w) - 0.1),
        "zero gradients": (torch.rand(b, k, h, w) + 0.1, torch.zeros(b, k, h, w)),
        "1x1 maps": (torch.rand(3, 16, 1, 1) + 0.1, torch.rand(3, 16, 1, 1) + 0.1),
    }
    for name, (A, G) in cases.items():
        maps = fused_gradcam(A.to(device), G.to(device), (20, 20), method=method)
        assert torch.equal(maps, torch.zeros_like(maps)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bitwise_deterministic_and_batch_independent(device, layout):
    A, G = inputs((6, 512, 14, 14), device, 21)
    if layout == "channels_last":
        A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
    for method in ("gradcam++", "layercam"):
        whole = fused_gradcam(A, G, (224, 224), method=method)
        for _ in range(3):
            assert torch.equal(whole, fused_gradcam(A, G, (224, 224), method=method)), method
        # Alone, a map may be summed in finer chunks (small batches split channels more): equal within
        # the rounding bound, and bitwise equal whatever its neighbours in a batch of the same size.
        alone = fused_gradcam(A[2:3], G[2:3], (224, 224), method=method)
        assert_within_bound(alone, A[2:3], G[2:3], (224, 224), method, where=f"alone {method}")
        swapped = fused_gradcam(A.flip(0), G.flip(0), (224, 224), method=method)
        assert torch.equal(swapped.flip(0), whole), method


def test_mixed_dtypes_and_a_non_contiguous_out_are_named():
    A, G = inputs((1, 2, 3, 3), "cpu")
    with pytest.raises(TypeError, match=r"activations \(torch.float32\) and gradients \(torch.float16\) must"):
        fused_gradcam(A, G.half(), (4, 4))
    with pytest.raises(RuntimeError, match=r"activations \(Float\) and gradients \(Half\) must have the same"):
        torch.ops.sportsnet.fused_gradcam(A, G.half(), [4, 4])
    strided = torch.empty(1, 4, 8)[:, :, ::2]
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        fused_gradcam(A, G, (4, 4), out=strided)
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        torch.ops.sportsnet.fused_gradcam.out(A, G, [4, 4], out=strided)


@CUDA
def test_cuda_error_paths_name_the_problem():
    A, G = inputs((1, 4, 3, 3), "cuda")
    with pytest.raises((ValueError, RuntimeError), match="must be on the same device"):
        fused_gradcam(A, G.cpu(), (8, 8))
    with pytest.raises(RuntimeError, match="out is on cpu but the inputs are on cuda"):
        torch.ops.sportsnet.fused_gradcam.out(A, G, [8, 8], out=torch.empty(1, 8, 8))
    with pytest.raises(RuntimeError, match="out must be contiguous"):
        torch.ops.sportsnet.fused_gradcam.out(A, G, [8, 8], out=torch.empty(1, 8, 16, device="cuda")[:, :, ::2])
    with pytest.raises(RuntimeError, match="out must be Float for Float inputs, got Double"):
        torch.ops.sportsnet.fused_gradcam.out(A, G, [8, 8], out=torch.empty(1, 8, 8, device="cuda",
                                                                            dtype=torch.float64))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (inputs on cuda:1 while cuda:0 is current)")
def test_inputs_on_the_second_gpu_run_there():
    A, G = inputs((2, 16, 7, 7), "cuda:1")
    with torch.cuda.device(0):
        got = check(A, G, (32, 32), "gradcam", where="cuda:1")
    assert got.device == torch.device("cuda:1")


@CUDA
def test_cuda_opcheck_of_both_overloads():
    A, G = inputs((2, 40, 7, 5), "cuda")
    op = torch.ops.sportsnet.fused_gradcam
    for method in ("gradcam", "gradcam++", "hirescam"):
        torch.library.opcheck(op.default, (A, G, [11, 9]), {"method": method, "normalize": True, "eps": 1e-7})
        out = torch.empty(2, 11, 9, device="cuda")
        torch.library.opcheck(op.out, (A, G, [11, 9]), {"method": method, "normalize": False, "eps": 1e-7,
                                                        "out": out})


@CUDA
def test_cuda_graph_capture_and_replay():
    """No host synchronisation or pageable copy inside the op: it can be captured in a CUDA graph."""
    A, G = inputs((4, 512, 14, 14), "cuda", 31)
    static_a, static_g = A.clone(), G.clone()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocator, lazy module loading) off the capture
        fused_gradcam(static_a, static_g, (224, 224), method="xgradcam")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fused_gradcam(static_a, static_g, (224, 224), method="xgradcam")
    A2, G2 = inputs((4, 512, 14, 14), "cuda", 32)
    static_a.copy_(A2)
    static_g.copy_(G2)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, fused_gradcam(A2, G2, (224, 224), method="xgradcam"))


@CUDA
def test_cuda_torch_compile_reduce_overhead():
    def explain(a, g):
        return fused_gradcam(a.relu(), g, (64, 64), method="gradcam++")

    A, G = inputs((2, 64, 7, 7), "cuda", 41)
    compiled = torch.compile(explain, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # records, then replays the graph
        got = compiled(A, G)
    torch.testing.assert_close(got, explain(A, G), atol=0, rtol=0)


def test_reference_rejects_mixed_dtypes_too():
    A, G = inputs((1, 2, 3, 3), "cpu")
    with pytest.raises(TypeError, match=r"activations \(torch.float32\) and gradients \(torch.bfloat16\)"):
        gradcam_reference(A, G.bfloat16(), (4, 4))
