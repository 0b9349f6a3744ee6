"""Data-pipeline speed: images/s from files on disk to a ready training batch, four ways.

    python -m benchmarks.bench_data                    # the synthetic set at 224 px, 13.5k images
    python -m benchmarks.bench_data --per-class 20     # a smaller set, for a quick look

The set is the synthetic sports set written at 224 px with the real 100-Sports' size (100 classes x
135 training images = 13,500 JPEGs; written once under data/bench/, about 3 minutes). Each path feeds
a DataLoader (shuffled, ``--batch-size``) and ends with the training transforms of ``train_vgg19.py``
(random resized crop to 224, flip, float, normalise) applied; it is timed from a fresh iterator until
``--images`` images are ready (worker start-up included, alike for all):
- ``plain``: what ImageFolder does: PIL decode per image (``load_rgb``), then the per-image v2
  transforms, in ``--workers`` processes that ship float32 batches;
- ``decode_jpeg+batched``: workers decode with ``torchvision.io.decode_jpeg`` into uint8 tensors and
  ship uint8 batches; the batch is augmented at once on the training device
  (``sportsnet.data.batch_aug``). Not exact: decode_jpeg's pixels can differ from PIL's by a level or
  two, and it applies no EXIF rotation;
- ``cache+per-image``: ``sportsnet.data.cache.DecodedImages`` (every image decoded once into a
  memory-mapped uint8 file, built before timing and reported separately), with the per-image
  transforms in the workers: the plain path's images draw for draw;
- ``cache+batched``: the same cache, sliced in the main process (``--cache-workers``), the batch
  augmented on the training device by ``sportsnet.data.batch_aug``: the same augmentation
  distribution as ``plain`` (bit-identical for the same draws); ``train_vgg19.py``'s default.
The "training device" is the CPU here. Variants are interleaved (rep 1 of each, then rep 2...).
Target: cache+batched >= 3x plain on 2 CPU cores. Results: benchmarks/results/data_cpu_<ISA class>.json.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import check_positive, select_devices, summary, time_interleaved
from sportsnet.data import Sports100, build_transforms, make_synthetic_sports
from sportsnet.data.batch_aug import collate_channels_last
from sportsnet.data.cache import DecodedImages
from sportsnet.engine.loop import to_device
from sportsnet.results import caption, environment, result_stem, table, write_result

TARGET_CACHE_VS_PLAIN = 3.0


class DecodeJpeg(Dataset):
    """Files decoded by torchvision.io.decode_jpeg (libjpeg-turbo) into uint8 ``(3, H, W)`` tensors."""

    def __init__(self, base: Sports100):
        self.samples = base.samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        path, target = self.samples[i]
        return decode_jpeg(read_file(path), mode=ImageReadMode.RGB), target


def data_table(p: dict) -> str:
    """The Markdown table of a result file (benchmarks/tables.py, the READMEs)."""
    env, c, t = p["environment"], p["config"], p["target"]
    rows = [[name, str(r.get("workers", c["workers"])), f"{r['images_per_s']:.0f}",
             f"{r['images_per_s_p25']:.0f}-{r['images_per_s_p75']:.0f}", f"{r['vs_plain']:.2f}x"]
            for name, r in p["results"].items()]
    head = (f"{caption(env)}, torch {env['torch']}, {env['time'][:10]}; {c['train_images']} JPEGs at {c['size']} px, "
            f"training device {env['device_type']}, batch {c['batch_size']}, "
            f"{c['images_timed_per_rep']} images per repetition; "
            f"cache file {p['cache_file_mb']:.0f} MB, built in {p['setup_seconds']['build_or_open_cache']:.0f} s "
            f"(0 when it existed).")
    return (head + "\n\n" + table(rows, ["path", "workers", "images/s", "p25-p75", "vs plain"])
            + f"\n\nTarget (cache+batched >= {t['cache_vs_plain']:g}x plain): measured {t['measured']:.2f}x, "
              f"**{'met' if t['met'] else 'not met'}**.")


def main(argv=None) -> None:
    """Parse the flags, write the set and the cache if missing, then time the paths on each selected device."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/bench/sports224", help="where the benchmark set is written")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--per-class", type=int, default=135, help="training images per class")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--cache-dir", default="data/cache/decoded")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="workers of the plain, decode_jpeg and per-image paths")
    p.add_argument("--cache-workers", type=int, default=-1,
                   help="workers of cache+batched (-1: 0 on the CPU, as train_vgg19.py picks; --workers on CUDA)")
    p.add_argument("--device", default="all", choices=("all", "cpu", "cuda"),
                   help="the training device; all: the CPU, then CUDA where present")
    p.add_argument("--images", type=int, default=2048, help="images per timed repetition")
    p.add_argument("--reps", type=int, default=5,
                   help="interleaved repetitions per path (the spread on a shared machine is wide)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the main process")
    args = p.parse_args(argv)
    check_positive(classes=args.classes, per_class=args.per_class, batch_size=args.batch_size, images=args.images,
                   reps=args.reps, threads=args.threads)
    if args.size < 32:
        raise SystemExit(f"error: --size {args.size} must be >= 32 (the synthetic set's smallest)")
    if args.workers < 0:
        raise SystemExit(f"error: --workers {args.workers} must be >= 0")
    torch.set_num_threads(args.threads)
    devices = select_devices(args.device)

    t0 = time.perf_counter()
    root = make_synthetic_sports(args.root, num_classes=args.classes, train_per_class=args.per_class,
                                 eval_per_class=1, size=args.size, seed=0)
    made = time.perf_counter() - t0
    base = Sports100(root, "train", transform=build_transforms(True, args.size))
    t0 = time.perf_counter()
    per_image = DecodedImages(base, args.cache_dir)
    cache_seconds = time.perf_counter() - t0
    raw = DecodedImages(Sports100(root, "train"), args.cache_dir)  # the same file; uint8 items
    on_device = build_transforms(True, args.size, batched=True)
    batches = max(1, min(args.images, len(base)) // args.batch_size)
    for device in devices:
        measure(device, args, base, per_image, raw, on_device, batches,
                {"write_set_if_missing": made, "build_or_open_cache": cache_seconds})


def measure(device: torch.device, args, base, per_image, raw, on_device, batches: int, setup: dict) -> None:
    """Time the four paths with ``device`` as the training device; write results/data_<device>.json."""
    cache_workers = args.cache_workers if args.cache_workers >= 0 else (0 if device.type == "cpu" else args.workers)
    # name: (dataset, workers, collate_fn, batch transform on the device)
    paths = {"plain": (base, args.workers, None, None),
             "decode_jpeg+batched": (DecodeJpeg(base), args.workers, collate_channels_last, on_device),
             "cache+per-image": (per_image, args.workers, None, None),
             "cache+batched": (raw, cache_workers, collate_channels_last, on_device)}

    def run(ds, workers, collate, transform):
        def f(i: int) -> None:
            loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=workers,
                                collate_fn=collate, pin_memory=device.type == "cuda",
                                generator=torch.Generator().manual_seed(i), drop_last=True)
            for k, (x, _) in enumerate(loader):
                x = to_device(x, device, channels_last=True)
                if transform is not None:
                    x = transform(x)
                assert x.shape == (args.batch_size, 3, args.size, args.size) and x.dtype == torch.float32
                if transform is not None:
                    transform.recycle(x)  # as the training loop does after each step
                if k + 1 == batches:
                    break
        return f

    times = time_interleaved({k: run(*v) for k, v in paths.items()}, device, reps=args.reps, warmup=0)
    n = batches * args.batch_size
    rows, results = [], {}
    plain_ips = n / summary(times["plain"])["median_s"]
    for name, t in times.items():
        s = summary(t)
        ips = n / s["median_s"]
        results[name] = {"images_per_s": ips, "images_per_s_p25": n / s["p75_s"], "images_per_s_p75": n / s["p25_s"],
                         "vs_plain": ips / plain_ips, "workers": paths[name][1], **s}
        rows.append([name, str(paths[name][1]), f"{ips:.0f}", f"{n / s['p75_s']:.0f}-{n / s['p25_s']:.0f}",
                     f"{ips / plain_ips:.2f}x"])
    env = environment(device)
    gain = results["cache+batched"]["vs_plain"]
    payload = {"benchmark": "data_pipeline", "environment": env,
               "config": {**vars(args), "cache_workers": cache_workers, "train_images": len(base),
                          "images_timed_per_rep": n},
               "setup_seconds": setup,
               "cache_file_mb": raw.data_path.stat().st_size / 2**20, "results": results,
               "target": {"cache_vs_plain": TARGET_CACHE_VS_PLAIN, "measured": gain,
                          "met": gain >= TARGET_CACHE_VS_PLAIN}}
    path = write_result(result_stem("data", device, env), payload)
    print(f"\n{env['device']}, batch {args.batch_size}, {len(base)} images at {args.size} px "
          f"(cache built/opened in {setup['build_or_open_cache']:.0f} s)\n"
          + table(rows, ["path", "workers", "images/s", "p25-p75", "vs plain"]) + f"\n-> {path}")


if __name__ == "__main__":
    main()
