"""fused_gradcam: the compiled operator vs the pure-PyTorch reference (eager, and under torch.compile).

    python -m benchmarks.bench_gradcam                       # CPU (2 threads) and CUDA when present
    python -m benchmarks.bench_gradcam --device cuda --batches 16,64,256

Shapes that matter, all resized to 224 x 224: VGG19 conv5_4 (512 x 14 x 14), CLIP RN50 layer4
(2048 x 7 x 7), ViT-B/32 tokens (768 x 7 x 7); batches 1, 16, 64, 256; float32 and bfloat16 inputs;
Grad-CAM (plus every method once at VGG19 B=64 float32). Reported per row: median time, speed-up over
the eager reference and over the compiled reference, and effective bandwidth = bytes of A + G + output
over time, next to the device's copy bandwidth measured in the same run (a large tensor copy, bytes
read + written). Targets (checked and written into the JSON): CPU (2 threads) at VGG19 B=64 float32,
>= 4x the eager reference and >= 40% of copy bandwidth; CUDA at VGG19 B=256 float32, >= 5x and >= 60%.
With ``--baseline REV`` (CPU only), the operator of git revision REV is built next to the current one
and timed in the same interleaved run, both called the same way, straight through torch.ops without the
Python wrapper ("baseline_op", "current_op_raw" and "speedup_vs_baseline" in each row).
Results: benchmarks/results/gradcam_<device>.json.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks import baseline as baseline_op
from benchmarks.common import (
    check_positive,
    comma_list,
    copies_to_defeat_cache,
    copy_bandwidth,
    select_devices,
    summary,
    time_interleaved,
)
from sportsnet.ops import METHODS, backend, fused_gradcam, gradcam_reference
from sportsnet.results import caption, environment, result_stem, table, write_result

SHAPES = {"vgg19_conv5_4": (512, 14, 14), "clip_rn50_layer4": (2048, 7, 7), "vit_b32_tokens": (768, 7, 7)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZE = (224, 224)
TARGETS = {"cpu": {"shape": "vgg19_conv5_4", "batch": 64, "dtype": "fp32", "speedup": 4.0, "copy_fraction": 0.4},
           "cuda": {"shape": "vgg19_conv5_4", "batch": 256, "dtype": "fp32", "speedup": 5.0, "copy_fraction": 0.6}}


def baseline_methods(baseline) -> set[str]:
    """The methods an earlier revision's operator knows (newer ones are not compared with it)."""
    A = torch.rand(1, 2, 3, 3)
    known = set()
    for method in METHODS:
        try:
            baseline.default(A, A, [4, 4], method, True, 1e-7)
            known.add(method)
        except RuntimeError:
            pass
    return known


def bench_config(device, shape_name, batch, dtype_name, method, reps, compiled_ref, max_seconds, baseline=None):
    """One row: the operator (new output and ``out=``) and the reference (eager, compiled) at one shape,
    batch, dtype and method, checked to agree, then timed interleaved."""
    k, h, w = SHAPES[shape_name]
    dtype = DTYPES[dtype_name]
    one = 2 * batch * k * h * w * torch.finfo(dtype).bits // 8
    n = copies_to_defeat_cache(one, device)
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = [(torch.rand(batch, k, h, w, device=device, generator=gen).add_(0.01).to(dtype),
               torch.randn(batch, k, h, w, device=device, generator=gen).to(dtype)) for _ in range(n)]
    out = torch.empty(batch, *SIZE, device=device)
    variants = {
        "compiled_op": lambda i: fused_gradcam(*inputs[i % n], SIZE, method=method),
        # The same kernel writing into a preallocated output: on CPU, a fresh output above glibc's
        # 32 MB mmap threshold (B=256) costs a page fault per 4 KB in every call, kernel or not.
        "compiled_op_out": lambda i: fused_gradcam(*inputs[i % n], SIZE, method=method, out=out),
        "reference": lambda i: gradcam_reference(*inputs[i % n], SIZE, method=method),
    }
    if baseline is not None and method in baseline[1]:
        variants["baseline_op"] = lambda i: baseline[0].default(*inputs[i % n], list(SIZE), method, True, 1e-7)
        current = torch.ops.sportsnet.fused_gradcam.default  # the same call path as the baseline's
        variants["current_op_raw"] = lambda i: current(*inputs[i % n], list(SIZE), method, True, 1e-7)
    if compiled_ref is not None:
        variants["reference_compiled"] = lambda i: compiled_ref(*inputs[i % n], SIZE, method=method)
    # Same answer before timing: the speed-up is only worth reporting for the same function.
    ref = gradcam_reference(*inputs[0], SIZE, method=method)
    for name in ("compiled_op", "baseline_op") if "baseline_op" in variants else ("compiled_op",):
        assert torch.allclose(variants[name](0), ref, atol=1e-4), f"{name} mismatch at {shape_name} B={batch}"
    times = time_interleaved(variants, device, reps, max_seconds=max_seconds)
    moved = one + batch * SIZE[0] * SIZE[1] * 4  # A + G read once, the float32 output written once
    row = {"shape": shape_name, "channels": k, "map": [h, w], "batch": batch, "dtype": dtype_name,
           "method": method, "input_copies": n, "bytes_moved": moved}
    for name, samples in times.items():
        s = summary(samples)
        row[name] = {**s, "effective_GBps": moved / s["median_s"] / 1e9}
    row["speedup_vs_reference"] = row["reference"]["median_s"] / row["compiled_op"]["median_s"]
    if "baseline_op" in row:
        row["speedup_vs_baseline"] = row["baseline_op"]["median_s"] / row["current_op_raw"]["median_s"]
    if "reference_compiled" in row:
        row["speedup_vs_reference_compiled"] = row["reference_compiled"]["median_s"] / row["compiled_op"]["median_s"]
    return row


def run_device(device, args):
    """Every configuration on ``device``; writes ``results/gradcam_<device>.json`` and prints its table."""
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    env = environment(device)
    copy_before = copy_bandwidth(device)
    # dynamo caches compiled code on the function's code object, shared by both devices' passes: the CPU
    # pass alone fills the default recompile limit (8), after which the CUDA pass would run eagerly.
    torch._dynamo.reset()
    compiled_ref = None if args.no_compile else torch.compile(gradcam_reference, dynamic=True)
    batches, dtypes = args.batches, args.dtypes
    configs = [(s, b, d, "gradcam") for s in SHAPES for d in dtypes for b in batches]
    configs += [("vgg19_conv5_4", 64, "fp32", m) for m in METHODS if m != "gradcam"]
    baseline, commit = None, None
    if args.baseline and device.type == "cpu":
        op, commit = baseline_op.load(args.baseline)
        baseline = (op, baseline_methods(op))  # the methods it knows, probed once
    rows = []
    for shape_name, batch, dtype_name, method in configs:
        row = bench_config(device, shape_name, batch, dtype_name, method, args.reps, compiled_ref, args.max_seconds,
                           baseline)
        rows.append(row)
        before = f"  {args.baseline} x{row['speedup_vs_baseline']:.2f}" if "speedup_vs_baseline" in row else ""
        print(f"  {shape_name:17s} B={batch:<3d} {dtype_name} {method:9s} compiled "
              f"{row['compiled_op']['median_s'] * 1e3:8.3f} ms  reference {row['reference']['median_s'] * 1e3:9.3f} ms"
              f"  x{row['speedup_vs_reference']:.1f}{before}", flush=True)
    # Copy bandwidth swings with the machine's load: measured before and after, the larger one is used.
    copy_after = copy_bandwidth(device)
    copy_Bps = max(copy_before, copy_after)
    for row in rows:
        row["fraction_of_copy_bandwidth"] = row["compiled_op"]["effective_GBps"] * 1e9 / copy_Bps
        row["fraction_of_copy_bandwidth_out"] = row["compiled_op_out"]["effective_GBps"] * 1e9 / copy_Bps
    target = TARGETS[device.type]
    hit = next(r for r in rows if r["shape"] == target["shape"] and r["batch"] == target["batch"]
               and r["dtype"] == target["dtype"] and r["method"] == "gradcam") \
        if target["batch"] in batches and target["dtype"] in dtypes else None
    verdict = None
    if hit is not None:
        verdict = {**target, "measured_speedup": hit["speedup_vs_reference"],
                   "measured_copy_fraction": hit["fraction_of_copy_bandwidth"],
                   "met": hit["speedup_vs_reference"] >= target["speedup"]
                   and hit["fraction_of_copy_bandwidth"] >= target["copy_fraction"]}
    payload = {"benchmark": "gradcam", "environment": env, "backend": backend(), "output_size": list(SIZE),
               "copy_bandwidth_GBps": copy_Bps / 1e9,
               "copy_bandwidth_before_after_GBps": [copy_before / 1e9, copy_after / 1e9],
               "target": verdict, "rows": rows}
    if baseline is not None:
        payload["baseline"] = {"revision": args.baseline, "commit": commit}
    path = write_result(result_stem("gradcam", device, env), payload)
    print_table(payload)
    print(f"wrote {path}")
    return payload


def print_table(p):
    """Print every row of a result (console detail: 3 decimals, the compiled reference's speed-up too)."""
    has_compiled = any("reference_compiled" in r for r in p["rows"])
    header = ["shape", "B", "dtype", "method", "op ms", "op out= ms", "reference ms"] + \
             (["ref+compile ms"] if has_compiled else []) + ["x ref"] + (["x ref+compile"] if has_compiled else []) + \
             ["op GB/s", "% of copy", "out= % of copy"]
    rows = []
    for r in p["rows"]:
        rows.append([r["shape"], r["batch"], r["dtype"], r["method"], f"{r['compiled_op']['median_s'] * 1e3:.3f}",
                     f"{r['compiled_op_out']['median_s'] * 1e3:.3f}", f"{r['reference']['median_s'] * 1e3:.3f}"]
                    + ([f"{r['reference_compiled']['median_s'] * 1e3:.3f}"] if has_compiled else [])
                    + [f"{r['speedup_vs_reference']:.1f}"]
                    + ([f"{r['speedup_vs_reference_compiled']:.1f}"] if has_compiled else [])
                    + [f"{r['compiled_op']['effective_GBps']:.1f}", f"{100 * r['fraction_of_copy_bandwidth']:.0f}%",
                       f"{100 * r['fraction_of_copy_bandwidth_out']:.0f}%"])
    print(f"\nfused_gradcam on {p['environment']['device']}, torch {p['environment']['torch']}; copy bandwidth "
          f"{p['copy_bandwidth_GBps']:.1f} GB/s (before/after: "
          f"{' / '.join(f'{x:.1f}' for x in p['copy_bandwidth_before_after_GBps'])}); output "
          f"{p['output_size'][0]}x{p['output_size'][1]}")
    print(table(rows, header))
    t = p["target"]
    if t:
        print(f"target ({t['shape']} B={t['batch']} {t['dtype']}): >= {t['speedup']}x reference and >= "
              f"{100 * t['copy_fraction']:.0f}% of copy bandwidth -> measured {t['measured_speedup']:.1f}x, "
              f"{100 * t['measured_copy_fraction']:.0f}%: {'MET' if t['met'] else 'NOT MET'}")


def gradcam_table(p: dict, batches=(1, 64, 256)) -> str:
    """The Markdown table of a result file (benchmarks/tables.py, the READMEs): batches 1, 64, 256 in
    float32 and B=64 in bfloat16, the target's verdict and bf16's gain over fp32."""
    rows = [[r["shape"], r["batch"], r["dtype"], r["method"], f"{r['compiled_op']['median_s'] * 1e3:.2f}",
             f"{r['compiled_op_out']['median_s'] * 1e3:.2f}", f"{r['reference']['median_s'] * 1e3:.2f}",
             f"{r['reference_compiled']['median_s'] * 1e3:.2f}" if "reference_compiled" in r else "-",
             f"{r['speedup_vs_reference']:.1f}x", f"{r['compiled_op']['effective_GBps']:.0f}",
             f"{100 * r['fraction_of_copy_bandwidth']:.0f}% / {100 * r['fraction_of_copy_bandwidth_out']:.0f}%"]
            for r in p["rows"] if r["batch"] in batches and (r["dtype"] == "fp32" or r["batch"] == 64)]
    header = ["shape", "B", "dtype", "method", "op ms", "op out= ms", "reference ms", "ref compiled ms", "vs ref",
              "op GB/s", "% of copy (op / out=)"]
    if "baseline" in p:  # one more column: before / after, both called straight through torch.ops
        header.append(f"vs {p['baseline']['revision']}")
        shown = [r for r in p["rows"] if r["batch"] in batches and (r["dtype"] == "fp32" or r["batch"] == 64)]
        for row, r in zip(rows, shown):
            row.append(f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else "-")
    env = p["environment"]
    t = p["target"]
    head = (f"{caption(env)}, torch {env['torch']}, {env['time'][:10]}; copy bandwidth "
            f"{p['copy_bandwidth_GBps']:.1f} GB/s; output {p['output_size'][0]}x{p['output_size'][1]}.")
    verdict = "" if not t else (f"\n\nTarget ({t['shape']} B={t['batch']} {t['dtype']}: >= {t['speedup']:g}x the eager "
                                f"reference and >= {100 * t['copy_fraction']:.0f}% of copy bandwidth): measured "
                                f"{t['measured_speedup']:.1f}x and {100 * t['measured_copy_fraction']:.0f}%, "
                                f"**{'met' if t['met'] else 'not met'}**.")
    fp32 = {r["shape"]: r for r in p["rows"] if r["batch"] == 64 and r["dtype"] == "fp32" and r["method"] == "gradcam"}
    bf16 = [f"{r['shape']} {fp32[r['shape']]['compiled_op']['median_s'] / r['compiled_op']['median_s']:.2f}x"
            for r in p["rows"] if r["batch"] == 64 and r["dtype"] == "bf16" and r["method"] == "gradcam"
            and r["shape"] in fp32]
    bf16_line = f"\n\nbf16 over fp32 at B=64 (op time): {', '.join(bf16)}." if bf16 else ""
    baseline = ""
    if "baseline" in p:  # --baseline: the earlier revision's op timed in the same run
        gains = [r["speedup_vs_baseline"] for r in p["rows"] if "speedup_vs_baseline" in r]
        baseline = (f"\n\nAgainst the CPU operator of {p['baseline']['revision']} ({p['baseline']['commit'][:10]}), "
                    f"timed in the same run: the current op runs at {min(gains):.2f}x to {max(gains):.2f}x its speed "
                    f"(median {statistics.median(gains):.2f}x) over its {len(gains)} rows (> 1: faster now).")
    return head + "\n\n" + table(rows, header) + verdict + bf16_line + baseline


def main(argv=None):
    """Parse the flags, then benchmark each selected device; returns each device's result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2,
                    help="CPU threads (default: %(default)s, as on the build machine)")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--dtypes", default="fp32,bf16", help=f"comma list of {', '.join(DTYPES)}")
    ap.add_argument("--reps", type=int, default=15, help="timed repetitions per variant (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating a config after this long")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    ap.add_argument("--baseline", metavar="REV",
                    help="also time the CPU operator of this git revision, in the same run (before/after)")
    args = ap.parse_args(argv)
    args.batches = comma_list("--batches", args.batches, positive_int=True)
    args.dtypes = comma_list("--dtypes", args.dtypes, choices=list(DTYPES))
    check_positive(threads=args.threads, reps=args.reps, max_seconds=args.max_seconds)
    if backend() != "compiled":
        raise SystemExit("error: the compiled operator is not available; this benchmark compares it with the reference")
    return [run_device(d, args) for d in select_devices(args.device)]


if __name__ == "__main__":
    main()
