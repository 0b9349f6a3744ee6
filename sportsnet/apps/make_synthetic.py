"""Write the offline synthetic sports set (the 100-Sports layout) and print what was written.

    python experiments/make_synthetic.py                        # the VGG demo's set (data/synthetic)
    python experiments/make_synthetic.py --preset clip-demo     # the CLIP programs' set (data/synthetic_clip)
    python experiments/make_synthetic.py --root /tmp/syn --num-classes 20 --size 64

The presets are :data:`sportsnet.data.SYNTHETIC_SETS`; any flag given overrides its value. A set that
already exists with the same arguments is reused, so the programs then find it in place.
"""
from __future__ import annotations

import argparse
import time

from ..data import OFFCENTRE_SPLIT, SYNTHETIC_SETS, Sports100, synthetic_set
from .config import OneLineParser, flag_message

FLAGS = {"root": str, "num_classes": int, "train_per_class": int, "eval_per_class": int, "size": int}
HELP = {"root": "output folder", "num_classes": "2..100, real class names",
        "train_per_class": "training images per class",
        "eval_per_class": f"images per class in valid, test and {OFFCENTRE_SPLIT}",
        "size": "image side in pixels, >= 32"}


def main(argv=None) -> None:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vgg-demo", choices=sorted(SYNTHETIC_SETS),
                   help="which program's set (default: %(default)s)")
    for name, kind in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{HELP[name]} (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    a = p.parse_args(argv)
    overrides = {k: getattr(a, k) for k in FLAGS if getattr(a, k) is not None}
    t0 = time.perf_counter()
    try:
        root = synthetic_set(a.preset, seed=a.seed, **overrides)
    except (ValueError, FileExistsError) as e:
        p.error(flag_message(e))
    spec = {**SYNTHETIC_SETS[a.preset], **overrides}
    counts = {s: len(Sports100(root, s)) for s in ("train", "valid", "test", OFFCENTRE_SPLIT)}
    print(f"synthetic sports set at {root}: {spec['num_classes']} classes, {spec['size']}px, {counts} "
          f"({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
