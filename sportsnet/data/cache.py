"""A decoded-image cache: every image of a dataset decoded once into one memory-mapped uint8 file.

JPEG decoding is a large part of the cost of feeding a training step from disk. The cache stores the
pixels that :func:`~sportsnet.data.images.load_rgb` decodes (EXIF-rotated RGB, the same bytes the
plain path sees) as an ``(N, H, W, 3)`` uint8 array, so a data-loader worker (or the main process)
reads an image by slicing the map; the OS page cache shares it between workers. An item is the
image as a ``(3, H, W)`` channels-last view, through the wrapped dataset's ``transform`` if it has one
(then the augmented images are the plain path's, draw for draw), else raw: the form that
:func:`~sportsnet.data.batch_aug.collate_channels_last` batches for augmentation on the training
device (``sportsnet.data.batch_aug``), ``train_vgg19.py``'s default.

The file is keyed by the files' paths, sizes and modification times: change, add or remove an image
and a new cache is built (the old one is left for the user to delete). It is written to a temporary
file and renamed into place, so an interrupted build leaves nothing half-written behind.
All images must share one size (100-Sports' images are all 224x224); otherwise the cache refuses,
naming the sizes found, and the plain path is the one to use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..serialization import atomic_path, write_json
from .images import ImageListDataset, _orientation, load_rgb

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: (N, H, W, 3); 1 was (N, 3, H, W)


def files_fingerprint(paths: Iterable[str]) -> str:
    """A digest of file paths, sizes and modification times (what a cache of their contents depends on)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def image_sizes(paths: Iterable[str], workers: int = 4) -> Counter:
    """``{"WxH": count}`` of the images as decoded (EXIF rotation included), from their headers only."""
    def size(p: str) -> str:
        try:
            with Image.open(p) as im:
                w, h = im.size
                if _orientation(im) in (5, 6, 7, 8):
                    w, h = h, w
            return f"{w}x{h}"
        except Exception:  # unreadable: load_rgb will say why when it is decoded
            return "unreadable"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return Counter(pool.map(size, paths))


def one_size(paths: Iterable[str], workers: int = 4) -> tuple[bool, Counter]:
    """Whether a decoded-image cache can hold these images (one size), and the sizes found."""
    sizes = image_sizes(paths, workers)
    return len(sizes) == 1 and "unreadable" not in sizes, sizes


def _decode_into(path: Path, shape: tuple[int, int, int, int], paths: list[str], workers: int) -> None:
    """Decode ``paths`` into a new uint8 memmap of ``shape`` at ``path``, flushed and unmapped on return."""
    h, w = shape[1:3]
    array = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)

    def put(i: int) -> None:
        img = np.asarray(load_rgb(paths[i]))
        if img.shape[:2] != (h, w):
            raise ValueError(f"{paths[i]} decodes to {img.shape[1]}x{img.shape[0]}, not {w}x{h}")
        array[i] = img

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        list(pool.map(put, range(len(paths))))
    array.flush()


class DecodedImages(Dataset):
    """``dataset``'s images from a decoded-image cache under ``cache_dir`` (built on first use).

    Items are ``(transform(uint8 (3, H, W) tensor), target)``, like the wrapped dataset's with its own
    ``transform`` (``build_transforms`` pipelines accept uint8 tensors), or the uint8 image itself when
    the dataset has no transform. Other attributes (``classes``,
    ``samples``, ``skipped``...) are the wrapped dataset's. Build the cache after ``verify()``: an
    unreadable image stops the build with its name.
    """

    def __init__(self, dataset: ImageListDataset, cache_dir: str | os.PathLike, workers: int = 4):
        self.dataset = dataset
        paths = [p for p, _ in dataset.samples]
        if not paths:
            raise ValueError("the dataset has no samples to cache")
        key = hashlib.sha256(f"v{FORMAT_VERSION}|{files_fingerprint(paths)}".encode()).hexdigest()[:20]
        folder = Path(cache_dir)
        self.data_path, self.meta_path = folder / f"decoded-{key}.u8", folder / f"decoded-{key}.json"
        meta = self._read_meta()
        if meta is None:
            meta = self._build(paths, folder, workers)
        self.shape = tuple(meta["shape"])
        self._map: np.ndarray | None = None  # opened lazily, once per process (workers included)

    def _read_meta(self) -> dict | None:
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            return None
        n, h, w, c = meta.get("shape", (0, 0, 0, 0))
        if meta.get("version") != FORMAT_VERSION or not self.data_path.is_file() \
                or self.data_path.stat().st_size != n * h * w * c:
            return None
        return meta

    def _build(self, paths: list[str], folder: Path, workers: int) -> dict:
        ok, sizes = one_size(paths, workers)
        if not ok:
            raise ValueError(f"a decoded-image cache needs images of one size; found {dict(sizes.most_common(5))}"
                             f" (width x height: count): use the plain data path")
        w, h = (int(v) for v in next(iter(sizes)).split("x"))
        folder.mkdir(parents=True, exist_ok=True)
        shape = (len(paths), h, w, 3)
        with atomic_path(self.data_path, sync=False) as tmp:
            _decode_into(tmp, shape, paths, workers)
        meta = {"shape": list(shape), "files": len(paths), "version": FORMAT_VERSION}
        write_json(self.meta_path, meta)
        log.info("decoded-image cache: %d images of %dx%d written to %s (%.0f MB)", len(paths), w, h,
                 self.data_path, self.data_path.stat().st_size / 2**20)
        return meta

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def pixels(self, index: int) -> torch.Tensor:
        """The ``(3, H, W)`` uint8 image at ``index``: a channels-last copy, owned by the caller."""
        if self._map is None:
            self._map = np.memmap(self.data_path, dtype=np.uint8, mode="r", shape=self.shape)
        return torch.from_numpy(np.array(self._map[index])).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x = self.pixels(index)
        transform = self.dataset.transform
        return (transform(x) if transform is not None else x), self.dataset.samples[index][1]

    def __getattr__(self, name: str):  # classes, samples, targets, skipped, relpath... of the dataset
        if name in ("dataset", "_map", "shape", "data_path", "meta_path"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getstate__(self) -> dict:  # workers reopen the map themselves
        return {**self.__dict__, "_map": None}
