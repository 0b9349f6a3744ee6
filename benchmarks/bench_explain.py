"""End-to-end explanation throughput: our GradCAM vs the naive path vs a plain forward (the floor).

    python -m benchmarks.bench_explain                      # CPU (2 threads) and CUDA when present
    python -m benchmarks.bench_explain --device cpu --batches 16

VGG19 (width 1.0, 1000 classes, random weights: timing only) at 224 px, target layer features.35,
float32, batches 1, 16, 64, interleaved in one run:
- ``explainer``: sportsnet.cam.GradCAM (a forward that records autograd only after the hooked layer,
  the gradient with respect to that activation alone, the fused epilogue);
- ``naive``: the common way (pytorch-grad-cam's): parameters requiring grad, a forward hook plus a
  tensor hook on the activation, a full ``backward()``, then the reference epilogue;
- ``floor``: an inference forward of the same batch, no map at all;
- at batch 16 also top-5 maps per image (one explainer call) against five separate naive calls.
Targets (CPU, float32, batch 16): explainer >= 3x the naive path's images/s and <= 1.15x the floor's
time; top-5 >= 4x five naive calls. Results: benchmarks/results/explain_<device>.json.
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import check_positive, comma_list, select_devices, summary, time_interleaved
from sportsnet.cam import GradCAM
from sportsnet.models import vgg19
from sportsnet.ops import backend, gradcam_reference
from sportsnet.results import caption, environment, result_stem, table, write_result

LAYER = "features.35"
TARGETS = {"batch": 16, "vs_naive": 3.0, "vs_floor_max": 1.15, "top5_vs_naive": 4.0}


def naive_gradcam(model, images, classes):
    """Grad-CAM the usual way: hooks, a full backward through the network, then the epilogue."""
    store = {}
    layer = dict(model.named_modules())[LAYER]

    def forward_hook(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda g: store.__setitem__("g", g))

    handle = layer.register_forward_hook(forward_hook)
    try:
        model.zero_grad(set_to_none=True)
        logits = model(images)
        logits.gather(1, classes[:, None]).sum().backward()
    finally:
        handle.remove()
    return gradcam_reference(store["a"].detach(), store["g"], images.shape[-2:])


def run_device(device, args):
    """Every batch size on ``device``; writes ``results/explain_<device>.json`` and prints its table."""
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    env = environment(device)
    torch.manual_seed(0)
    model = vgg19(width=args.width).to(device).eval()
    cam = GradCAM(model, target_layer=LAYER)
    rows = []
    for batch in args.batches:
        images = torch.randn(batch, 3, args.size, args.size, device=device)
        with torch.no_grad():  # not inference_mode: these indices feed autograd-tracked gathers
            top5 = model(images).topk(5, dim=1).indices
        top1 = top5[:, 0]
        # The explainer and the naive path agree before they are timed.
        torch.testing.assert_close(cam(images).maps[:, 0], naive_gradcam(model, images, top1), atol=2e-3, rtol=0)
        variants = {
            "explainer": lambda i: cam(images),
            "naive": lambda i: naive_gradcam(model, images, top1),
            "floor": lambda i: torch.inference_mode()(model)(images),
        }
        if batch == TARGETS["batch"]:
            variants["explainer_top5"] = lambda i: cam(images, top_k=5)
            variants["naive_5_calls"] = lambda i: [naive_gradcam(model, images, top5[:, k]) for k in range(5)]
        reps = args.reps if args.reps else (5 if batch <= 1 else 2)
        # One warm-up call per code path at this shape (oneDNN builds its primitives per shape); the
        # five naive calls reuse the naive path just warmed, and they are 5 calls per repetition anyway.
        for name in ("explainer", "naive", "floor", "explainer_top5"):
            if name in variants:
                variants[name](0)
        times = time_interleaved(variants, device, reps, warmup=0)
        row = {"batch": batch, "size": args.size, "width": args.width}
        for name, samples in times.items():
            s = summary(samples)
            row[name] = {**s, "images_per_s": batch / s["median_s"]}
        row["explainer_vs_naive"] = row["naive"]["median_s"] / row["explainer"]["median_s"]
        row["explainer_over_floor"] = row["explainer"]["median_s"] / row["floor"]["median_s"]
        if "explainer_top5" in row:
            row["top5_vs_naive_5_calls"] = row["naive_5_calls"]["median_s"] / row["explainer_top5"]["median_s"]
        rows.append(row)
        print(f"  B={batch:<3d} explainer {row['explainer']['images_per_s']:7.2f} img/s  naive "
              f"{row['naive']['images_per_s']:7.2f}  floor {row['floor']['images_per_s']:7.2f}", flush=True)
    hit = next((r for r in rows if r["batch"] == TARGETS["batch"]), None)
    verdict = None
    if hit is not None:
        verdict = {**TARGETS, "measured_vs_naive": hit["explainer_vs_naive"],
                   "measured_over_floor": hit["explainer_over_floor"],
                   "measured_top5_vs_naive": hit["top5_vs_naive_5_calls"],
                   "met": hit["explainer_vs_naive"] >= TARGETS["vs_naive"]
                   and hit["explainer_over_floor"] <= TARGETS["vs_floor_max"]
                   and hit["top5_vs_naive_5_calls"] >= TARGETS["top5_vs_naive"]}
    payload = {"benchmark": "explain", "environment": env, "backend": backend(), "model": f"vgg19 width {args.width}",
               "target_layer": LAYER, "dtype": "fp32", "target": verdict, "rows": rows}
    path = write_result(result_stem("explain", device, env), payload)
    print(explain_table(payload))
    print(f"wrote {path}")
    return payload


def explain_table(p: dict) -> str:
    """The Markdown table of a result file (benchmarks/tables.py, the READMEs)."""
    rows = []
    for r in p["rows"]:
        rows.append([r["batch"], f"{r['explainer']['images_per_s']:.2f}", f"{r['naive']['images_per_s']:.2f}",
                     f"{r['floor']['images_per_s']:.2f}", f"{r['explainer_vs_naive']:.2f}x",
                     f"{r['explainer_over_floor']:.3f}",
                     f"{r['top5_vs_naive_5_calls']:.1f}x" if "top5_vs_naive_5_calls" in r else "-"])
    env, t = p["environment"], p["target"]
    text = (f"{caption(env)}, torch {env['torch']}, {env['time'][:10]}; {p['model']} at {p['rows'][0]['size']} px, "
            f"{p['dtype']}, layer {p['target_layer']}.\n\n"
            + table(rows, ["B", "explainer img/s", "naive img/s", "floor img/s", "explainer vs naive",
                           "explainer time / floor", "top-5 vs 5 naive calls"]))
    if t:
        text += (f"\n\nTargets at B={t['batch']}: >= {t['vs_naive']:g}x naive, <= {t['vs_floor_max']:g}x the floor's "
                 f"time, top-5 >= {t['top5_vs_naive']:g}x: measured {t['measured_vs_naive']:.2f}x, "
                 f"{t['measured_over_floor']:.3f}, {t['measured_top5_vs_naive']:.1f}x: "
                 f"**{'met' if t['met'] else 'not met'}**.")
        hit = next(r for r in p["rows"] if r["batch"] == t["batch"])
        text += (f" In this run the naive path took {hit['naive']['median_s'] / hit['floor']['median_s']:.2f}x the "
                 f"floor's time and the explainer {hit['explainer_over_floor']:.3f}x.")
    return text


def main(argv=None):
    """Parse the flags, then benchmark each selected device; returns each device's result."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions (default: 5 / 3 / 2 by batch size)")
    args = ap.parse_args(argv)
    args.batches = comma_list("--batches", args.batches, positive_int=True)
    check_positive(threads=args.threads, size=args.size, width=args.width)
    if args.size < 32:
        raise SystemExit(f"error: --size {args.size} must be >= 32 (VGG halves it 5 times)")
    if args.reps < 0:
        raise SystemExit(f"error: --reps {args.reps} must be >= 0 (0: by batch size)")
    return [run_device(d, args) for d in select_devices(args.device)]


if __name__ == "__main__":
    main()
