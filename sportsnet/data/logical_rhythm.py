"""Logical Rhythm 2k20 sports image classification (a Kaggle competition; 22 classes).

Layout::

    ROOT/train_labels.csv     image,sports      (image paths like ./train/1635.jpg)
    ROOT/train/<n>.jpg
    ROOT/test/<n>.jpg         unlabeled

The labeled ``train`` split comes from the CSV; the ``test`` split is every image in ``test/`` with
target ``-1``. :meth:`LogicalRhythm.write_submission` writes predictions in the competition's format.
For a validation split, hold out part of train with :func:`sportsnet.data.stratified_split`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from .images import ImageListDataset, Skipped, entry_is, is_image_file, resolve_under

CSV_NAME = "train_labels.csv"
UNLABELED = -1


class LogicalRhythm(ImageListDataset):
    """Args: ``root``, ``split`` (``"train"`` labeled or ``"test"`` unlabeled), ``transform``,
    ``strict`` (see :class:`~sportsnet.data.images.ImageListDataset`). Classes are the sorted
    distinct values of the CSV's ``sports`` column, for both splits."""

    SPLITS = ("train", "test")

    def __init__(
    self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        strict: bool = False,
    ):
        root = Path(root).expanduser()
        if split not in self.SPLITS:
            raise ValueError(f"split={split!r} is not one of {self.SPLITS}")
        if not root.is_dir():
            raise FileNotFoundError(
                f"dataset root {str(root)!r} does not exist; expected {CSV_NAME}, train/ and test/ in it"
            )
        csv_path = root / CSV_NAME
        if not csv_path.is_file():
            raise FileNotFoundError(f"{str(csv_path)!r} is missing; expected a CSV with columns image,sports")
        rows = self._read_csv(csv_path)
        classes = sorted({label for _, label in rows})
        self.split = split
        if split == "train":
            index = {c: i for i, c in enumerate(classes)}
            samples, skipped = [], []
            for image, label in rows:
                # The competition lists paths as ./train/<n>.jpg; accept bare names as well.
                name = image[2:] if image.startswith("./") else image
                path = resolve_under(root, name if "/" in name else f"train/{name}")
                if not is_image_file(path):
                    skipped.append(Skipped(image, f"not an image file ({path.suffix or 'no extension'})"))
                elif not path.is_file():
                    skipped.append(Skipped(image, f"listed in {CSV_NAME} but missing on disk"))
                else:
                    samples.append((str(path), index[label]))
        else:
            test_dir = root / "test"
            if not test_dir.is_dir():
                raise FileNotFoundError(f"split folder {str(test_dir)!r} is missing; expected test/<n>.jpg")
            samples, skipped = [], []
            for f in sorted(os.scandir(test_dir), key=lambda e: e.name):
                if entry_is(f, "file") and is_image_file(f.name):
                    samples.append((f.path, UNLABELED))
                else:
                    skipped.append(Skipped(f"test/{f.name}", "not an image file"))
        super().__init__(root, samples, classes, transform, skipped, strict)

    @staticmethod
    def _read_csv(csv_path: Path) -> list[tuple[str, str]]:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "image" not in header or "sports" not in header:
                raise ValueError(f"{str(csv_path)!r} has columns {header}; expected 'image,sports'")
            reader.fieldnames = header
            rows = [(r["image"].strip(), r["sports"].strip()) for r in reader]
        if not rows:
            raise ValueError(f"{str(csv_path)!r} has no rows")
        return rows

    @property
    def labeled(self) -> bool:
        return self.split == "train"

    def write_submission(self, predictions: Sequence[int], path: str | os.PathLike) -> Path:
        """Write ``image,sports`` rows (the competition's submission format) for this split's images.

        ``predictions`` are class indices in sample order. Returns the written path.
        """
        if len(predictions) != len(self.samples):
            raise ValueError(f"got {len(predictions)} predictions for {len(self.samples)} images")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "sports"])
            for (img, _), p in zip(self.samples, predictions):
                if not 0 <= int(p) < len(self.classes):
                    raise ValueError(f"prediction {int(p)} for {img!r} is not a class index"
                                     f" in [0, {len(self.classes)})")
                w.writerow([f"./{self.relpath(img)}", self.classes[int(p)]])
        return path
