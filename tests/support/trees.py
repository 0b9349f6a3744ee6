"""Writers of small dataset trees in the real layouts (see shared/DATASETS.md), for the reader tests."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

# Distinct colours per class so a test can check that an image decoded to its own pixels.
PALETTE = [(200, 30, 30), (30, 160, 40), (40, 60, 210), (230, 200, 20), (150, 40, 170), (20, 180, 190)]


def write_image(path: Path, colour=(200, 30, 30), size=(20, 16), mode: str = "RGB", fmt: str | None = None) -> Path:
    """Write a solid image; ``mode`` may be RGB, L, CMYK (JPEG), RGBA/P/I;16 (PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode == "CMYK":
        img = img.convert("CMYK")
    elif mode == "I;16":
        a = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(a)  # uint16 -> mode I;16
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path, format=fmt)
    return path


def write_truncated_jpeg(path: Path, size=(64, 48)) -> Path:
    """A JPEG cut off partway through its scan data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_sports_tree(
    root: Path,
    counts: dict[str, dict[str, int]],
    csv_release: str | None = "new",
) -> Path:
    """``counts[split][class] = n`` solid-colour JPEGs at ``split/class/NNN.jpg``, plus ``sports.csv``
    in the ``"new"`` (with class id) or ``"old"`` release, or none."""
    classes = sorted(counts["train"])
    rows = []
    for split, per_class in counts.items():
        for name, n in per_class.items():
            cid = classes.index(name) if name in classes else 99
            for i in range(n):
                rel = f"{split}/{name}/{i + 1:03d}.jpg"
                write_image(root / rel, PALETTE[cid % len(PALETTE)])
                rows.append([cid, rel, name, split])
    if csv_release is not None:
        write_sports_csv(root, rows, csv_release)
    return root


def write_sports_csv(root: Path, rows: list[list], release: str = "new") -> None:
    """``rows`` are ``[class id, filepaths, labels, data set]``."""
    with open(root / "sports.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        if release == "new":
            w.writerow(["class id", "filepaths", "labels", "data set"])
            w.writerows(rows)
        else:
            w.writerow(["filepaths", "labels", "data set"])
            w.writerows(r[1:] for r in rows)


class _OpensAFile:
    """Unpickling this calls ``open(target, "w")``: it creates a file, proving code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_malicious_pickle(path: Path, key: str, marker: Path, nest: str | None = None) -> None:
    """A torch-like file whose ``key`` entry (under ``nest`` when given) would create ``marker`` if
    loaded with a plain pickle load."""
    import pickle

    payload = {key: _OpensAFile(str(marker))}
    path.write_bytes(pickle.dumps({nest: payload} if nest else payload, protocol=2))

