"""The GPU workloads of the acceptance run, each run in a fresh interpreter (and under compute-sanitizer) by a step:

    python -m tools.gpu_check.workloads probe --device cuda        # load the op as the steps will, run it once
    python -m tools.gpu_check.workloads workload --device cuda     # what compute-sanitizer checks (--check: and
                                                                   # every map against the reference)
    python -m tools.gpu_check.workloads profile --device cuda --out FILE   # kernel times, as JSON

Each prints its result as one JSON line after ``gpu_check worker: `` (:data:`programs.WORKER_MARK`).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import sync
from sportsnet.apps.config import device_from_flag

from .programs import WORKER_MARK

#: The profile's shapes (K, h, w) -> 224 x 224: VGG19's conv5_4 at a 224 px input is 14x14 (bench_gradcam's
#: target row), 7x7 after the last pooling.
PROFILE_SHAPES = ((512, 7, 7), (512, 14, 14))
PROFILE_BATCHES = {"cuda": (1, 256), "cpu": (1, 8)}
PROFILE_SIZE = (224, 224)
PROFILE_SESSIONS = 3


def _inputs(shape, dtype, layout, device, seed):
    b, k, h, w = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    A = torch.rand(b, k, h, w, device=device, generator=gen).add_(0.01).to(dtype)  # positive, as after a ReLU
    G = torch.randn(b, k, h, w, device=device, generator=gen).to(dtype)
    if layout == "channels_last":
        A, G = A.contiguous(memory_format=torch.channels_last), G.contiguous(memory_format=torch.channels_last)
    return A, G


#: The workload's shapes: (B, K, h, w) -> (H, W).
WORKLOAD_SHAPES = (
    ((2, 33, 7, 7), (224, 224)),  # K = 32 + 1: a partial channel chunk; B > 1; 7x7 -> 224
    ((1, 512, 7, 7), (224, 224)),  # VGG19's conv5 after the last pooling
    ((3, 70, 14, 14), (30, 17)),  # three chunks, a non-square output
    ((2, 8, 1, 1), (16, 16)),  # 1x1 maps
    ((2, 5, 1, 6), (1, 20)),  # h = 1 and H = 1
    ((2, 5, 6, 1), (20, 1)),  # w = 1 and W = 1
    ((5, 2, 3, 3), (5, 7)),  # K = 2
)
WORKLOAD_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
WORKLOAD_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float64: 1e-9}


def workload(device: torch.device, check: bool = False) -> dict[str, Any]:
    """The op on ``device`` for every method x normalize x dtype x layout (NCHW, channels-last) at the first
    shape; every method x normalize x layout in float32 at the others; two methods in the other dtypes there;
    fused_weighted_cam with and without a bias at every shape, dtype and layout; and each shape and dtype once
    into ``out=``. ``check``: each map against the reference too."""
    from sportsnet.ops import (
        METHODS,
        backend,
        fused_gradcam,
        fused_weighted_cam,
        gradcam_reference,
        weighted_cam_reference,
    )

    chosen = backend()
    calls, mismatches, worst = 0, [], 0.0
    t0 = time.perf_counter()
    for index, (shape, size) in enumerate(WORKLOAD_SHAPES):
        for dtype, layout in itertools.product(WORKLOAD_DTYPES, ("contiguous", "channels_last")):
            A, G = _inputs(shape, dtype, layout, device, seed=calls)
            if index == 0 or dtype == torch.float32:
                cases = list(itertools.product(METHODS, (True, False)))
            else:
                cases = [("gradcam", True), ("layercam", False)]
            for method, normalize in cases:
                got = fused_gradcam(A, G, size, method=method, normalize=normalize)
                calls += 1
                if check:
                    ref = gradcam_reference(A, G, size, method=method, normalize=normalize)
                    scale = max(1.0, float(ref.abs().max()))
                    err = float((got - ref).abs().max()) / scale
                    worst = max(worst, err)
                    if not err <= WORKLOAD_TOLERANCE[dtype]:
                        mismatches.append(f"{method} normalize={normalize} {dtype} {layout} {shape} -> {size}: "
                                          f"{err:.2e}")
            # fused_weighted_cam: the same kernels' Weighted method, with and without a bias.
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            weights = G.to(acc).mean((2, 3)).contiguous()
            for bias in (None, -weights.sum(1) * 0.01):
                got = fused_weighted_cam(A, weights, size, bias=bias)
                calls += 1
                if check:
                    ref = weighted_cam_reference(A, weights, size, bias=bias)
                    err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
                    worst = max(worst, err)
                    if not err <= WORKLOAD_TOLERANCE[dtype]:
                        mismatches.append(f"fused_weighted_cam bias={bias is not None} {dtype} {layout} {shape} -> "
                                          f"{size}: {err:.2e}")
            if layout == "channels_last":
                out = torch.empty(shape[0], *size, device=device, dtype=acc)
                fused_gradcam(A, G, size, method="gradcam++", out=out)
                calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"device": str(device), "backend": chosen, "calls": calls, "seconds": round(time.perf_counter() - t0, 2),
            "checked": check, "max_relative_error": worst if check else None, "mismatches": mismatches[:10]}


def _self_device_us(event) -> float:
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else event.self_cuda_time_total)  # torch < 2.4


def profile_rows(prof, device_type: str, iters: int, top: int = 15) -> list[dict[str, Any]]:
    """torch.profiler's averages as rows: each CUDA kernel (and copy) on a GPU, each operator's self CPU time on
    the CPU; calls and mean microseconds, largest total first."""
    kind = torch.autograd.DeviceType.CUDA if device_type == "cuda" else torch.autograd.DeviceType.CPU
    rows = []
    for event in prof.key_averages():
        if getattr(event, "device_type", None) != kind or not event.count:
            continue
        total = _self_device_us(event) if device_type == "cuda" else float(event.self_cpu_time_total)
        if total > 0:
            rows.append({"name": event.key[:240], "calls": event.count, "calls_per_call": event.count / iters,
                         "mean_us": total / event.count, "us_per_call": total / iters})
    rows.sort(key=lambda r: -r["us_per_call"])
    return rows[:top] + ([{"name": f"({len(rows) - top} more)", "calls": sum(r["calls"] for r in rows[top:]),
                           "us_per_call": sum(r["us_per_call"] for r in rows[top:])}] if len(rows) > top else [])


def profile(device: torch.device) -> dict[str, Any]:
    """Kernel (on the CPU: operator) times of the op and the eager reference, float32, at :data:`PROFILE_SHAPES`
    and :data:`PROFILE_BATCHES`: after warm-up calls, :data:`PROFILE_SESSIONS` profiler sessions of several calls
    each, the one with the least time kept."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from sportsnet.ops import backend, fused_gradcam, gradcam_reference

    chosen = backend()
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    iters = 10 if cuda else 5
    with torch_profile(activities=activities):  # the profiler's own start-up, outside the cases
        fused_gradcam(*_inputs((1, 8, 7, 7), torch.float32, "contiguous", device, seed=0), PROFILE_SIZE)
    cases = []
    for (k, h, w), batch in itertools.product(PROFILE_SHAPES, PROFILE_BATCHES[device.type]):
        A, G = _inputs((batch, k, h, w), torch.float32, "contiguous", device, seed=batch)
        case: dict[str, Any] = {"shape": [k, h, w], "batch": batch, "size": list(PROFILE_SIZE), "dtype": "fp32"}
        for name, fn in (("op", fused_gradcam), ("reference", gradcam_reference)):
            for _ in range(3):
                fn(A, G, PROFILE_SIZE)
            sync(device)
            sessions = []  # the least disturbed of a few sessions is kept (a busy CPU stalls some calls)
            for _ in range(PROFILE_SESSIONS):
                t0 = time.perf_counter()
                with torch_profile(activities=activities) as prof:
                    for _ in range(iters):
                        fn(A, G, PROFILE_SIZE)
                    sync(device)
                rows = profile_rows(prof, device.type, iters)
                sessions.append((sum(r["us_per_call"] for r in rows), (time.perf_counter() - t0) / iters, rows))
            total, wall, rows = min(sessions, key=lambda x: x[0])
            case[name] = {"us_per_call": total, "wall_us_per_call": wall * 1e6,
                          "us_per_call_each_session": [round(x[0], 1) for x in sessions],
                          "what": "kernel time" if cuda else "self CPU time of the operators", "rows": rows}
        moved = 2 * batch * k * h * w * 4 + batch * PROFILE_SIZE[0] * PROFILE_SIZE[1] * 4  # A + G + the output
        if case["op"]["us_per_call"] > 0:
            case["speedup"] = case["reference"]["us_per_call"] / case["op"]["us_per_call"]
            case["op_effective_GBps"] = moved / case["op"]["us_per_call"] / 1e3
        cases.append(case)
        del A, G
    # On a shared CPU the times swing with the load: recorded with them (load averages over 1, 5, 15 minutes).
    return {"device": str(device), "backend": chosen, "iters": iters, "sessions": PROFILE_SESSIONS,
            "load_average": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(), "cases": cases}


def probe(device: torch.device) -> dict[str, Any]:
    """Load the operator (as every later step will) and run it once on the CPU and on ``device``."""
    from sportsnet.ops import backend, fused, fused_gradcam, gradcam_reference

    chosen = backend()
    library = sys.modules.get("sportsnet._C")
    out = {"backend": chosen, "kernel_devices": sorted(fused._KERNEL_DEVICES), "cuda_archs": fused._CUDA_ARCHS,
           "library": library.__file__ if library is not None else sorted(getattr(torch.ops, "loaded_libraries", [])),
           "max_abs_error": {}}
    for dev in dict.fromkeys([torch.device("cpu"), device]):
        A, G = _inputs((2, 33, 7, 7), torch.float32, "contiguous", dev, seed=0)
        got, ref = fused_gradcam(A, G, (20, 20)), gradcam_reference(A, G, (20, 20))
        out["max_abs_error"][dev.type] = float((got - ref).abs().max())
    return out




def main(argv=None) -> int:
    """Run one workload; returns 1 when the op differed from the reference."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=("probe", "workload", "profile"))
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="workload: compare every map with the reference")
    ap.add_argument("--out", type=Path, default=None, help="profile: the JSON file to write")
    args = ap.parse_args(argv)
    device = device_from_flag(args.device)
    if args.workload == "probe":
        result = probe(device)
    elif args.workload == "workload":
        result = workload(device, check=args.check)
    else:
        if args.out is None:
            ap.error("profile needs --out FILE")
        result = profile(device)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        result = {"cases": len(result["cases"]), "out": str(args.out)}
    print(WORKER_MARK + json.dumps(result), flush=True)
    return 1 if result.get("mismatches") else 0


if __name__ == "__main__":
    raise SystemExit(main())
