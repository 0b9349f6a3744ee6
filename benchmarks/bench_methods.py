"""Every CAM method against the peers that have it (pytorch-grad-cam, torchcam), side by side in one run.

    python -m benchmarks.bench_methods                       # CPU (2 threads) and CUDA when present
    python -m benchmarks.bench_methods --device cpu --width 0.25 --batches 1,8

VGG19 (random weights: timing only) at 224 px, float32, target layer features.35 (conv5_4's ReLU),
batches 1 and 8, the same images and target classes for every library; each call builds its explainer
(the peers keep hooks on the model while they exist, and run with their own default batch sizes) and
returns maps at 224 x 224. Ours runs twice: ``ours`` in float32 like the peers (in the memory format and
batch size our explainers choose for the device), and ``ours_auto`` at the precision the hardware module
picks for this device too (gradient-free methods only; the gradient methods' extra cost is one small
backward). ``floor``: one inference forward of the batch. Before timing, every variant's maps are
checked to be finite and in [0, 1].

Targets (issue 18): Score-CAM >= 3x pytorch-grad-cam's and torchcam's; Ablation-CAM >= 10x
pytorch-grad-cam's; Eigen-CAM within 1.2x of the floor; every other method no slower than its peer.
On a 2-core CPU, ``--width 0.25`` (a quarter of the channels, 128 at conv5_4) keeps the peers' Score-CAM,
hundreds of full forwards per image, within minutes; the results say which width ran.
Results: benchmarks/results/methods_<device>.json.
"""
from __future__ import annotations

import argparse
import importlib
from typing import Any, Callable

import torch

from benchmarks.common import check_positive, comma_list, select_devices, summary, time_interleaved
from sportsnet.cam import make_explainer
from sportsnet.models import vgg19
from sportsnet.results import caption, environment, result_stem, table, write_result

LAYER = "features.35"
GRADIENT_FREE = ("scorecam", "ablationcam", "eigencam")
#: Our method -> (pytorch-grad-cam class, torchcam class); None where the peer does not have it.
PEERS = {
    "gradcam": ("GradCAM", "GradCAM"),
    "gradcam++": ("GradCAMPlusPlus", "GradCAMpp"),
    "xgradcam": ("XGradCAM", "XGradCAM"),
    "hirescam": ("HiResCAM", None),
    "layercam": ("LayerCAM", "LayerCAM"),
    "gradcam-elementwise": ("GradCAMElementWise", None),
    "eigengradcam": ("EigenGradCAM", None),
    "scorecam": ("ScoreCAM", "ScoreCAM"),
    "ablationcam": ("AblationCAM", None),
    "eigencam": ("EigenCAM", None),
}
#: Minimum speed-up over each peer (the issue's targets); "floor": at most this times an inference forward.
TARGETS = {"scorecam": {"pytorch_grad_cam": 3.0, "torchcam": 3.0}, "ablationcam": {"pytorch_grad_cam": 10.0},
           "eigencam": {"floor": 1.2}}
DEFAULT_MIN = 1.0  # every other method: no slower than its peer


def _ours(model, method, images, classes, auto: bool):
    options = {}
    if method in GRADIENT_FREE:
        options = {"precision": "auto" if auto else "fp32"}
    with make_explainer(model, method, target_layer=LAYER, **options) as cam:
        return cam(images, targets=classes).maps[:, 0]


def _pgc(cls, model, images, classes):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = dict(model.named_modules())[LAYER]
    with cls(model=model, target_layers=[layer]) as cam:
        return torch.from_numpy(cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes]))


def _torchcam(cls, model, images, classes, gradient: bool):
    with cls(model, target_layer=LAYER, input_shape=tuple(images.shape[1:])) as extractor:
        with torch.set_grad_enabled(gradient):
            scores = model(images)
        maps = extractor(class_idx=classes.tolist(), scores=scores)[0].detach()
    return torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 0]


def peer_variants(method: str, model, images, classes) -> dict[str, Callable[[int], Any]]:
    """The peers' calls for ``method`` that are installed (none missing silently: the row says which ran)."""
    out = {}
    pgc_name, tc_name = PEERS.get(method, (None, None))
    if pgc_name and importlib.util.find_spec("pytorch_grad_cam"):
        pgc = getattr(importlib.import_module("pytorch_grad_cam"), pgc_name)
        out["pytorch_grad_cam"] = lambda i: _pgc(pgc, model, images, classes)
    if tc_name and importlib.util.find_spec("torchcam"):
        tc = getattr(importlib.import_module("torchcam.methods"), tc_name)
        out["torchcam"] = lambda i: _torchcam(tc, model, images, classes, method not in GRADIENT_FREE)
    return out


def bench_method(method, model, images, classes, reps, max_seconds):
    """One row: our variants, the peers and the floor, checked, then timed interleaved."""
    variants = {"ours": lambda i: _ours(model, method, images, classes, auto=False)}
    if method in GRADIENT_FREE:
        variants["ours_auto"] = lambda i: _ours(model, method, images, classes, auto=True)
    variants.update(peer_variants(method, model, images, classes))
    variants["floor"] = lambda i: torch.inference_mode()(model)(images)
    for name, f in variants.items():  # also the warm-up
        if name != "floor":
            maps = f(0).float()
            assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-5, f"{method} {name}"
    times = time_interleaved(variants, images.device, reps, warmup=0, max_seconds=max_seconds)
    row: dict[str, Any] = {"method": method, "batch": images.shape[0]}
    for name, samples in times.items():
        row[name] = {**summary(samples), "images_per_s": images.shape[0] / summary(samples)["median_s"]}
    best = min(row["ours"]["median_s"], row.get("ours_auto", row["ours"])["median_s"])
    row["speedup"] = {peer: row[peer]["median_s"] / row["ours"]["median_s"]
                      for peer in ("pytorch_grad_cam", "torchcam") if peer in row}
    row["speedup_auto"] = {peer: row[peer]["median_s"] / best for peer in ("pytorch_grad_cam", "torchcam")
                           if peer in row}
    row["over_floor"] = best / row["floor"]["median_s"]
    goals = TARGETS.get(method, {p: DEFAULT_MIN for p in row["speedup"]})
    row["target"] = goals
    row["met"] = all(row["over_floor"] <= g if peer == "floor" else row["speedup_auto"].get(peer, 0) >= g
                     for peer, g in goals.items())
    return row


def run_device(device, args):
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    # numpy's BLAS (pytorch-grad-cam's SVDs, cv2) on one thread: its idle threads spin after each call and
    # slowed whatever ran next on a 2-core machine (floors of 33-73 ms against 15 ms in other rows). Imported
    # here, so that the tables (which import methods_table) need only the library's dependencies.
    try:
        import threadpoolctl
    except ImportError:
        raise SystemExit("error: bench_methods needs threadpoolctl, in the bench extra: pip install -e '.[bench]' "
                         "(make install installs it)") from None
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        return _run_device(device, args)


def _run_device(device, args):
    env = environment(device)
    torch.manual_seed(0)
    model = vgg19(width=args.width).to(device).eval()
    rows = []
    for batch in args.batches:
        g = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, args.size, args.size, generator=g).to(device)
        classes = torch.randint(0, 1000, (batch,), generator=g).to(device)
        for method in args.methods:
            reps = args.reps if method not in ("scorecam",) else max(1, args.reps // 2)
            row = bench_method(method, model, images, classes, reps, args.max_seconds)
            rows.append(row)
            peers = "  ".join(f"x{v:.1f} vs {k}" for k, v in row["speedup_auto"].items())
            print(f"  {method:19s} B={batch:<2d} ours {row['ours']['median_s'] * 1e3:9.1f} ms  {peers}  "
                  f"{'met' if row['met'] else 'NOT met'}", flush=True)
    payload = {"benchmark": "methods", "environment": env, "model": f"vgg19 width {args.width}",
               "size": args.size, "target_layer": LAYER, "dtype": "fp32", "rows": rows}
    path = write_result(result_stem("methods", device, env), payload)
    print(methods_table(payload))
    print(f"wrote {path}")
    return payload


def methods_table(p: dict) -> str:
    """The Markdown table of a result file (benchmarks/tables.py)."""
    rows = []
    for r in p["rows"]:
        def ms(name):
            return f"{r[name]['median_s'] * 1e3:.0f}" if name in r else "-"

        def gain(peer):
            return f"{r['speedup_auto'][peer]:.1f}x" if peer in r["speedup_auto"] else "-"

        goal = ", ".join(f"{'<=' if k == 'floor' else '>='} {v:g}x {k}" for k, v in r["target"].items())
        rows.append([r["method"], r["batch"], ms("ours"), ms("ours_auto"), ms("pytorch_grad_cam"), ms("torchcam"),
                     ms("floor"), gain("pytorch_grad_cam"), gain("torchcam"), f"{r['over_floor']:.2f}",
                     f"{goal or '-'}: {'met' if r['met'] else '**not met**'}"])
    env = p["environment"]
    return (f"{caption(env)}, torch {env['torch']}, {env['time'][:10]}; {p['model']} at {p['size']} px, float32 "
            f"inputs, layer {p['target_layer']}. Milliseconds per call (median); gains use our faster variant.\n\n"
            + table(rows, ["method", "B", "ours fp32 ms", "ours auto ms", "pytorch-grad-cam ms", "torchcam ms",
                           "floor ms", "vs pytorch-grad-cam", "vs torchcam", "ours / floor", "target"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--methods", default=",".join(PEERS), help="comma list (default: every method with a peer)")
    ap.add_argument("--width", type=float, default=1.0, help="VGG19 channel width multiplier (default: %(default)s)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (Score-CAM: half)")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop repeating a row after this long")
    args = ap.parse_args(argv)
    args.batches = comma_list("--batches", args.batches, positive_int=True)
    args.methods = comma_list("--methods", args.methods, choices=list(PEERS))
    check_positive(threads=args.threads, reps=args.reps, width=args.width, size=args.size,
                   max_seconds=args.max_seconds)
    return [run_device(d, args) for d in select_devices(args.device)]


if __name__ == "__main__":
    main()
