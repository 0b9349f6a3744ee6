"""Kaggle "100 Sports Image Classification" (gpiosenka/sports-classification).

Layout::

    ROOT/train/<class name>/<n>.jpg     (class folder names contain spaces: "air hockey")
    ROOT/valid/<class name>/<n>.jpg
    ROOT/test/<class name>/<n>.jpg
    ROOT/sports.csv                     class id,filepaths,labels,data set   (newer release)
                                        filepaths,labels,data set            (older release)

The class index is the alphabetical order of the class names, which is also the CSV's ``class id``.
The offline synthetic set (:mod:`sportsnet.data.synthetic`) writes this layout with one more split,
``ROOT/offcentre/<class name>/<n>.jpg`` (:data:`OFFCENTRE_SPLIT`, "data set" value ``offcentre`` in the
CSV), read like the others; a real 100-Sports folder has none, and asking for it names the splits it has.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Literal

from .images import ImageListDataset, Skipped, entry_is, is_image_file, resolve_under

#: The synthetic set's evaluation split whose objects lie away from the image centre (so a map that always
#: peaks at the centre misses them); one home for its name: the programs, the reader and the writer use this.
OFFCENTRE_SPLIT = "offcentre"
SPLITS = ("train", "valid", "test", OFFCENTRE_SPLIT)
CSV_NAME = "sports.csv"
CSV_REQUIRED = ("filepaths", "labels", "data set")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")


def _hint(split: str) -> str:
    return "; only the synthetic set (make_synthetic_sports) writes it" if split == OFFCENTRE_SPLIT else ""


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {str(root)!r} does not exist or is not a folder; expected the 100-Sports "
            f"tree with train/, valid/, test/ class folders and/or {CSV_NAME}"
        )


def _scan_split(root: Path, split: str) -> tuple[dict[str, list[str]], list[Skipped]]:
    """Image files per class folder of one split, plus the non-image entries that were skipped."""
    split_dir = root / split
    if not split_dir.is_dir():
        found = [s for s in SPLITS if (root / s).is_dir()]
        raise FileNotFoundError(
            f"split folder {str(split_dir)!r} is missing; expected {split}/<class name>/<image> "
            f"under the dataset root (found split folders: {', '.join(found) or 'none'}){_hint(split)}"
        )
    files: dict[str, list[str]] = {}
    skipped: list[Skipped] = []
    for class_entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry_is(class_entry, "dir"):
            skipped.append(Skipped(f"{split}/{class_entry.name}", "not a class folder"))
            continue
        names = []
        for f in sorted(os.scandir(class_entry.path), key=lambda e: e.name):
            rel = f"{split}/{class_entry.name}/{f.name}"
            if not entry_is(f, "file"):
                skipped.append(Skipped(rel, "not a regular file"))
            elif not is_image_file(f.name):
                skipped.append(Skipped(rel, f"not an image file ({Path(f.name).suffix or 'no extension'})"))
            else:
                names.append(f.path)
        files[class_entry.name] = names
    return files, skipped


def _read_csv(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CSV_REQUIRED if c not in header]
        if missing:
            raise ValueError(
                f"{str(csv_path)!r} lacks column(s) {missing}; found {header}, expected "
                f"'class id,filepaths,labels,data set' or 'filepaths,labels,data set'"
            )
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def _classes_from_csv(rows: list[dict[str, str]], csv_path: Path) -> list[str]:
    classes = sorted({r["labels"] for r in rows if r["data set"] == "train"})
    if not classes:
        raise ValueError(f"{str(csv_path)!r} has no rows with 'data set' == 'train'")
    if rows and "class id" in rows[0]:
        index = {c: i for i, c in enumerate(classes)}
        for r in rows:
            label, cid = r["labels"], r["class id"]
            if label in index and cid != "" and float(cid) != index[label]:
                raise ValueError(
                    f"{str(csv_path)!r}: class id {cid} for {label!r} disagrees with the alphabetical "
                    f"class order (expected {index[label]})"
                )
    return classes


class Sports100(ImageListDataset):
    """One split of the 100-Sports dataset as a map-style ``(image, class index)`` dataset.

    Args:
        root: the folder holding ``train/``, ``valid/``, ``test/`` and (optionally) ``sports.csv``.
        split: ``"train"``, ``"valid"`` or ``"test"`` (or :data:`OFFCENTRE_SPLIT` of a synthetic set).
        transform: applied to the decoded RGB PIL image.
        source: ``"folders"`` scans the class folders, ``"csv"`` reads ``sports.csv`` (either
            release); ``"auto"`` uses the CSV when it exists.
        strict: raise on the first unreadable image instead of skipping and counting it.

    ``classes`` always comes from the *train* split, so indices agree across splits; a class in
    valid/test that train lacks is an error. ``skipped`` lists entries left out and why.
    """

    def __init__(
    self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        source: Literal["auto", "folders", "csv"] = "auto",
        strict: bool = False,
    ):
        root = Path(root).expanduser()
        _check_split(split)
        _check_root(root)
        if source not in ("auto", "folders", "csv"):
            raise ValueError(f"source={source!r} is not one of ('auto', 'folders', 'csv')")
        csv_path = root / CSV_NAME
        if source == "csv" and not csv_path.is_file():
            raise FileNotFoundError(f"source='csv' but {str(csv_path)!r} does not exist")
        self.source = "csv" if source == "csv" or (source == "auto" and csv_path.is_file()) else "folders"
        self.split = split
        if self.source == "csv":
            classes, samples, skipped = self._index_csv(root, csv_path, split)
        else:
            classes, samples, skipped = self._index_folders(root, split)
        super().__init__(root, samples, classes, transform, skipped, strict)

    @staticmethod
    def _index_folders(root: Path, split: str):
        train_files, train_skipped = _scan_split(root, "train")
        classes = sorted(train_files)
        if not classes:
            raise ValueError(f"{str(root / 'train')!r} has no class folders")
        files, skipped = (train_files, train_skipped) if split == "train" else _scan_split(root, split)
        unknown = sorted(set(files) - set(classes))
        if unknown:
            raise ValueError(
                f"{split} split has class folder(s) {unknown} that train does not have; "
                f"every class must appear in train"
            )
        index = {c: i for i, c in enumerate(classes)}
        samples = [(p, index[c]) for c in sorted(files) for p in files[c]]
        return classes, samples, skipped

    @staticmethod
    def _index_csv(root: Path, csv_path: Path, split: str):
        rows = _read_csv(csv_path)
        classes = _classes_from_csv(rows, csv_path)
        index = {c: i for i, c in enumerate(classes)}
        split_rows = [r for r in rows if r["data set"] == split]
        if not split_rows:
            found = sorted({r["data set"] for r in rows})
            raise ValueError(f"{str(csv_path)!r} has no rows with 'data set' == {split!r}; found {found}{_hint(split)}")
        samples: list[tuple[str, int]] = []
        skipped: list[Skipped] = []
        for r in split_rows:
            path = resolve_under(root, r["filepaths"])  # raises on ../ escapes
            if r["labels"] not in index:
                raise ValueError(
                    f"{str(csv_path)!r}: {split} row {r['filepaths']!r} has class {r['labels']!r}, "
                    f"which no train row has; every class must appear in train"
                )
            if not is_image_file(path):
                skipped.append(Skipped(r["filepaths"], f"not an image file ({path.suffix or 'no extension'})"))
            elif not path.is_file():
                skipped.append(Skipped(r["filepaths"], "listed in sports.csv but missing on disk"))
            else:
                samples.append((str(path), index[r["labels"]]))
        return classes, samples, skipped
