"""Image-caption pairs: Flickr8k in its original release and in the Kaggle ``captions.txt`` variant.

Original release::

    ROOT/Flicker8k_Dataset/<image>.jpg        (sic; also accepted: Flickr8k_Dataset/[Flicker8k_Dataset/])
    ROOT/[Flickr8k_text/]Flickr8k.token.txt   <image>.jpg#<0-4>\\t<caption>
    ROOT/[Flickr8k_text/]Flickr_8k.{trainImages,devImages,testImages}.txt

Kaggle variant::

    ROOT/Images/<image>.jpg                   (or images directly under ROOT)
    ROOT/captions.txt                         CSV with header image,caption (captions contain commas)

The official split lists are used when present (in either layout). Without them, ``split="all"``
gives every image and other splits fall back to a deterministic hash split of the image names
(about 75/12.5/12.5, like 6000/1000/1000), which is logged.
"""
from __future__ import annotations

import csv
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from .images import ImageListDataset, Skipped, is_image_file, resolve_under

log = logging.getLogger(__name__)

TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "valid": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
SPLITS = ("train", "valid", "test", "all")
_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Flickr8k_Dataset",
               "Flickr8k_Dataset/Flickr8k_Dataset", "Images")
_TEXT_DIRS = (".", "Flickr8k_text")


def _first_existing(root: Path, candidates, kind: str) -> Path | None:
    for c in candidates:
        p = root / c
        if (p.is_dir() if kind == "dir" else p.is_file()):
            return p
    return None


def read_flickr_tokens(path: Path) -> dict[str, list[str]]:
    """``<image>#<n>\\t<caption>`` lines -> {image name: [captions in n order]}."""
    caps: dict[str, list[tuple[int, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, sep, caption = line.partition("\t")
            name, hash_, n = key.rpartition("#")
            if not sep or not hash_ or not n.strip().isdigit():
                raise ValueError(f"{str(path)!r} line {lineno}: expected '<image>#<n>\\t<caption>', got {line[:80]!r}")
            caps.setdefault(name.strip(), []).append((int(n), caption.strip()))
    return {k: [c for _, c in sorted(v)] for k, v in caps.items()}


def read_kaggle_captions(path: Path) -> dict[str, list[str]]:
    """``image,caption`` CSV -> {image name: [captions in file order]}."""
    caps: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "image" not in header or "caption" not in header:
            raise ValueError(f"{str(path)!r} has columns {header}; expected 'image,caption'")
        reader.fieldnames = header
        for row in reader:
            caps.setdefault(row["image"].strip(), []).append((row["caption"] or "").strip())
    return caps


def hash_split(name: str) -> str:
    """Deterministic split of an image name when no official lists exist."""
    bucket = zlib.crc32(name.encode("utf-8")) % 8
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


class Captions(ImageListDataset):
    """Images with their captions; items are ``(image, caption)``.

    Args:
        root: the dataset folder (either layout, see the module docstring).
        split: ``"train"``, ``"valid"`` (Flickr's "dev"), ``"test"`` or ``"all"``.
        transform: applied to the decoded RGB PIL image.
        caption: ``"random"`` draws one of the image's captions per access (training; seeded through
            torch, so data-loader workers differ), ``"first"`` always the first.
        layout: ``"flickr8k"``, ``"kaggle"`` or ``"auto"``.

    ``captions[i]`` lists all captions of sample ``i`` (for retrieval evaluation). Entries whose image
    file is missing (Flickr8k has one such key) are listed in ``skipped``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        caption: Literal["random", "first"] = "random",
        layout: Literal["auto", "flickr8k", "kaggle"] = "auto",
        strict: bool = False,
    ):
        root = Path(root).expanduser()
        if split == "dev":
            split = "valid"
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        if caption not in ("random", "first"):
            raise ValueError(f"caption={caption!r} is not one of ('random', 'first')")
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {str(root)!r} does not exist")
        token = _first_existing(root, [f"{d}/{TOKEN_FILE}" for d in _TEXT_DIRS], "file")
        kaggle = root / KAGGLE_FILE
        if layout == "auto":
            layout = "flickr8k" if token is not None else "kaggle" if kaggle.is_file() else "auto"
        if layout == "flickr8k":
            if token is None:
                raise FileNotFoundError(f"no {TOKEN_FILE} under {str(root)!r} (or its Flickr8k_text/)")
            captions = read_flickr_tokens(token)
            image_dir = _first_existing(root, _IMAGE_DIRS, "dir")
            if image_dir is None:
                raise FileNotFoundError(f"no image folder under {str(root)!r}; expected one of {list(_IMAGE_DIRS)}")
        elif layout == "kaggle":
            if not kaggle.is_file():
                raise FileNotFoundError(f"{str(kaggle)!r} is missing; expected a CSV with columns image,caption")
            captions = read_kaggle_captions(kaggle)
            image_dir = root / "Images" if (root / "Images").is_dir() else root
        else:
            raise FileNotFoundError(
                f"{str(root)!r} holds neither {TOKEN_FILE} (Flickr8k) nor {KAGGLE_FILE} (Kaggle variant)"
            )

        names = self._split_names(root, split, captions)
        skipped: list[Skipped] = []
        samples: list[tuple[str, int]] = []
        self._captions: list[list[str]] = []
        for name in names:
            if name not in captions:
                skipped.append(Skipped(name, f"in the {split} list but has no captions"))
                continue
            path = resolve_under(image_dir, name)
            if not path.is_file():
                skipped.append(Skipped(name, "image file missing"))
            elif not is_image_file(path):
                skipped.append(Skipped(name, f"not an image file ({path.suffix})"))
            else:
                samples.append((str(path), len(self._captions)))
                self._captions.append(captions[name])
        self.split, self.layout, self.caption_mode = split, layout, caption
        super().__init__(image_dir, samples, [], transform, skipped, strict)

    @staticmethod
    def _split_names(root: Path, split: str, captions: dict[str, list[str]]) -> list[str]:
        if split == "all":
            return sorted(captions)
        list_file = _first_existing(root, [f"{d}/{SPLIT_FILES[split]}" for d in _TEXT_DIRS], "file")
        if list_file is None:
            log.info("%s: no %s; using a deterministic hash split", root, SPLIT_FILES[split])
            return sorted(n for n in captions if hash_split(n) == split)
        with open(list_file, encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip()]

    @property
    def captions(self) -> list[list[str]]:
        """All captions of each sample, in sample order."""
        return [self._captions[k] for _, k in self.samples]

    def __getitem__(self, index: int) -> tuple[Any, str]:
        i, img = self.load_with_fallback(index)
        caps = self._captions[self.samples[i][1]]
        j = 0 if self.caption_mode == "first" else int(torch.randint(len(caps), ()))
        return (self.transform(img) if self.transform is not None else img), caps[j]
