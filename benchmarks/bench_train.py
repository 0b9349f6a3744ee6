"""Training-step speed of VGG19: precision x memory format x eager/compiled, side by side.

    python -m benchmarks.bench_train                        # CPU (2 threads) and CUDA when present
    python -m benchmarks.bench_train --device cpu --no-compile

One step = forward + cross-entropy + backward + SGD (momentum) step, on random images already on the
device (the data pipeline is bench_data.py's subject). Variants, interleaved in one process (rep 1 of
every variant, then rep 2, ...), each with its own copy of the same model and optimizer:
fp32 / bf16 autocast (and fp16 with a GradScaler on CUDA) x NCHW / channels-last, eager; plus
``torch.compile`` of fp32 NCHW and of the fastest eager variant. CPU: width 0.25 at 112 px, batch 16,
so it finishes in minutes on 2 cores; CUDA: full width at 224 px, batches 32 and 64.
Reported: images/s (median, 25th-75th percentile) and the gain over fp32 NCHW eager. Target (CUDA):
channels-last + AMP >= 1.3x fp32 NCHW. Results: benchmarks/results/train_<device>.json.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from benchmarks.common import check_positive, comma_list, select_devices, summary, time_interleaved
from sportsnet.hardware import autocast, choose_channels_last, choose_precision, make_grad_scaler
from sportsnet.models import vgg19
from sportsnet.results import caption, environment, result_stem, table, write_result

TARGET_CUDA_AMP_CL = 1.3


def make_step(model: nn.Module, precision: str, channels_last: bool, device: torch.device, images, labels):
    """A closure doing one training step on rotating input copies (``images[i % n]``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    xs = [x.contiguous(memory_format=fmt) for x in images]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = make_grad_scaler(device, precision)
    loss_fn = nn.CrossEntropyLoss()

    def step(i: int) -> None:
        x, y = xs[i % len(xs)], labels[i % len(labels)]
        with autocast(device, precision):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return model, step


def run_device(device: torch.device, args) -> dict:
    """Every variant and batch on ``device``; writes ``results/train_<device>.json`` and prints its table."""
    cpu = device.type == "cpu"
    if cpu:
        torch.set_num_threads(args.threads)
    width = args.width if args.width else (0.25 if cpu else 1.0)
    size = args.size if args.size else (112 if cpu else 224)
    batches = args.batches or ([16] if cpu else [32, 64])
    precisions = ["fp32", "bf16"] + ([] if cpu else ["fp16"])
    if not cpu and not torch.cuda.is_bf16_supported():
        precisions.remove("bf16")
    env = environment(device)
    results, failed = [], {}
    for batch in batches:
        torch.manual_seed(0)
        base = vgg19(width=width, num_classes=100)
        images = [torch.randn(batch, 3, size, size, device=device) for _ in range(2)]
        labels = [torch.randint(0, 100, (batch,), device=device) for _ in range(2)]
        variants, models = {}, {}
        for precision in precisions:
            for cl in (False, True):
                name = f"{precision} {'channels-last' if cl else 'NCHW'} eager"
                models[name], variants[name] = make_step(copy.deepcopy(base), precision, cl, device, images, labels)
        if args.compile:
            # Which eager variant is fastest decides which one is also compiled: a short interleaved probe.
            probe = time_interleaved(variants, device, reps=3, warmup=1)
            best = min(probe, key=lambda k: summary(probe[k])["median_s"])
            for name in dict.fromkeys(["fp32 NCHW eager", best]):
                precision, layout = name.split()[:2]
                compiled = torch.compile(copy.deepcopy(models[name]))
                t0 = time.perf_counter()
                _, step = make_step(compiled, precision, layout == "channels-last", device, images, labels)
                try:
                    step(0)  # compile outside the timed region
                except Exception as e:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
                    # Seen with ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU (torch 2.13): the compiled backward
                    # reads max-pool indices as garbage.
                    why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    failed[name.replace("eager", "compiled")] = why
                    print(f"  compiled {name}: failed ({why}); left out", flush=True)
                    continue
                print(f"  compiled {name}: {time.perf_counter() - t0:.0f} s", flush=True)
                variants[name.replace("eager", "compiled")] = step
        times = time_interleaved(variants, device, reps=args.reps, warmup=2, max_seconds=args.max_seconds)
        base_ips = batch / summary(times["fp32 NCHW eager"])["median_s"]
        for name, t in times.items():
            s = summary(t)
            results.append({"batch": batch, "variant": name, "images_per_s": batch / s["median_s"],
                            "images_per_s_p25": batch / s["p75_s"], "images_per_s_p75": batch / s["p25_s"],
                            "gain_vs_fp32_nchw_eager": batch / s["median_s"] / base_ips, **s})
        del models, variants
    best = max(results, key=lambda r: r["images_per_s"])
    # What train_vgg19.py's defaults (--precision auto, channels-last auto) pick on this hardware, against
    # the fastest eager variant: the benchmark that checks sportsnet.hardware's rules.
    auto_name = (f"{choose_precision('auto', device).value} "
                 f"{'channels-last' if choose_channels_last(None, device).value else 'NCHW'} eager")
    auto = {}
    for batch in batches:
        eager = [r for r in results if r["batch"] == batch and r["variant"].endswith("eager")]
        picked = next(r for r in eager if r["variant"] == auto_name)
        fastest = max(eager, key=lambda r: r["images_per_s"])
        auto[str(batch)] = {"variant": auto_name, "images_per_s": picked["images_per_s"],
                            "fastest_eager": fastest["variant"],
                            "fraction_of_fastest_eager": picked["images_per_s"] / fastest["images_per_s"]}
    payload = {"benchmark": "train_step", "environment": env, "auto": auto, "compile_failed": failed,
               "config": {"width": width, "image_size": size, "batches": batches, "precisions": precisions,
                          "compile": args.compile, "threads": args.threads if cpu else None},
               "results": results,
               "best": {k: best[k] for k in ("batch", "variant", "images_per_s", "gain_vs_fp32_nchw_eager")}}
    if not cpu:
        amp_cl = [r for r in results if "channels-last eager" in r["variant"] and not r["variant"].startswith("fp32")]
        gain = max(r["gain_vs_fp32_nchw_eager"] for r in amp_cl)
        payload["target"] = {"amp_channels_last_vs_fp32_nchw": TARGET_CUDA_AMP_CL, "measured": gain,
                             "met": gain >= TARGET_CUDA_AMP_CL}
    path = write_result(result_stem("train", device, env), payload)
    rows = [[r["batch"], r["variant"], f"{r['images_per_s']:.1f}",
             f"{r['images_per_s_p25']:.1f}-{r['images_per_s_p75']:.1f}", f"{r['gain_vs_fp32_nchw_eager']:.2f}x"]
            for r in results]
    print(f"\n{env['device']}: VGG19 width {width}, {size} px\n"
          + table(rows, ["batch", "variant", "images/s", "p25-p75", "vs fp32 NCHW eager"]) + f"\n-> {path}")
    return payload


def train_table(p: dict) -> str:
    """The Markdown table of a result file (benchmarks/tables.py, the READMEs)."""
    env, c = p["environment"], p["config"]
    rows = [[r["batch"], r["variant"], f"{r['images_per_s']:.1f}",
             f"{r['images_per_s_p25']:.1f}-{r['images_per_s_p75']:.1f}", f"{r['gain_vs_fp32_nchw_eager']:.2f}x"]
            for r in p["results"]]
    head = (f"{caption(env)}, torch {env['torch']}, {env['time'][:10]}; VGG19 width {c['width']} at "
            f"{c['image_size']} px, SGD step.")
    b = p["best"]
    tail = f"\n\nBest: {b['variant']} at batch {b['batch']}, {b['gain_vs_fp32_nchw_eager']:.2f}x fp32 NCHW eager."
    for name, error in p.get("compile_failed", {}).items():
        tail += f" {name} is missing: torch.compile failed here ({error})."
    for batch, a in p.get("auto", {}).items():
        tail += (f" The defaults (`--precision auto`, channels-last auto) pick {a['variant']} here: "
                 f"{100 * a['fraction_of_fastest_eager']:.0f}% of the fastest eager variant's speed "
                 f"({a['fastest_eager']}, batch {batch}).")
    if "target" in p:
        t = p["target"]
        tail += (f" Target (channels-last + AMP >= {t['amp_channels_last_vs_fp32_nchw']:g}x fp32 NCHW): measured "
                 f"{t['measured']:.2f}x, **{'met' if t['met'] else 'not met'}**.")
    return head + "\n\n" + table(rows, ["batch", "variant", "images/s", "p25-p75", "vs fp32 NCHW eager"]) + tail


def main(argv=None) -> None:
    """Parse the flags, then benchmark each selected device."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=("all", "cpu", "cuda"), help="cuda only when present")
    p.add_argument("--width", type=float, default=0.0, help="VGG width (default: 0.25 on CPU, 1.0 on CUDA)")
    p.add_argument("--size", type=int, default=0, help="image side (default: 112 on CPU, 224 on CUDA)")
    p.add_argument("--batches", default="", help="comma-separated batch sizes (default: 16 on CPU, 32,64 on CUDA)")
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions per variant")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop repeating after this long (>= 3 reps)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True, help="include torch.compile")
    args = p.parse_args(argv)
    args.batches = comma_list("--batches", args.batches, positive_int=True) if args.batches else []
    check_positive(reps=args.reps, max_seconds=args.max_seconds, threads=args.threads)
    if args.width < 0:
        raise SystemExit(f"error: --width {args.width} must be > 0 (or 0: the device's default)")
    if args.size < 0 or 0 < args.size < 32:
        raise SystemExit(f"error: --size {args.size} must be >= 32 (or 0: the device's default)")
    for device in select_devices(args.device):
        run_device(device, args)


if __name__ == "__main__":
    main()
