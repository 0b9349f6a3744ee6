"""Write the offline synthetic sports set (the 100-Sports layout) and print what was written.

    python experiments/make_synthetic.py --root data/synthetic --num-classes 10 --size 64
"""
from __future__ import annotations

import argparse
import time

from sportsnet.data import Sports100, make_synthetic_sports


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="data/synthetic", help="output folder (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=10, help="2..100, real class names (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--eval-per-class", type=int, default=10, help="images per class in valid and in test")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, >= 32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = make_synthetic_sports(a.root, a.num_classes, a.train_per_class, a.eval_per_class, a.size, a.seed)
    except (ValueError, FileExistsError) as e:
        p.error(str(e))
    counts = {s: len(Sports100(root, s)) for s in ("train", "valid", "test")}
    print(f"synthetic sports set at {root}: {a.num_classes} classes, {a.size}px, {counts} "
          f"({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
