"""Writers of small dataset trees in the real layouts (see shared/DATASETS.md), for the reader tests."""
from __future__ import annotations

import csv
import io
import struct
import zlib
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


# Hand-made image files for hostile-input tests.


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (not by PIL): ``(H, W)`` grey or ``(H, W, 3)`` RGB uint16."""
    h, w = array.shape[:2]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))
    return _png(w, h, 16, 0 if array.ndim == 2 else 2, zlib.compress(raw))


def write_black_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit black PNG of any size: the zlib stream of zero rows is built row block by row
    block, so a 20000x20000 "decompression bomb" costs ~50 kB on disk and ~0.1 s to write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    parts = [z.compress(row * 1000) for _ in range(height // 1000)]
    parts += [z.compress(row * (height % 1000)), z.flush()]
    path.write_bytes(_png(width, height, 1, 0, b"".join(parts)))
    return path


def write_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def random_png_bytes(size=(32, 24)) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_truncated_png(path: Path, keep: float | int = 0.5) -> Path:
    """A random-pixel PNG cut to ``keep`` bytes (int) or that fraction of its length (float)."""
    data = random_png_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:n])
    return path


def exif_block(entries) -> bytes:
    """APP1 payload: a big-endian TIFF header and one IFD of ``(tag, type, count, 4 value bytes)``."""
    ifd = struct.pack(">H", len(entries))
    ifd += b"".join(struct.pack(">HHI", tag, typ, count) + value for tag, typ, count, value in entries)
    return b"Exif\x00\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd + b"\x00\x00\x00\x00"


ORIENTATION = 0x0112
SHORT, ASCII = 3, 2


def orientation_entry(value: int):
    return (ORIENTATION, SHORT, 1, struct.pack(">HH", value, 0))


def quadrants(width=48, height=32) -> np.ndarray:
    """Four solid quadrants in four colours, so each of the 8 flips/rotations looks different."""
    a = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    a[:h, :w], a[:h, w:], a[h:, :w], a[h:, w:] = PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3]
    return a


def quadrant_centres(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    return np.array([a[y, x] for y in (h // 4, 3 * h // 4) for x in (w // 4, 3 * w // 4)], dtype=int)


def sample_index(ds, rel: str) -> int:
    return [ds.relpath(p) for p, _ in ds.samples].index(rel)


def over_white(rgb, alpha) -> np.ndarray:
    rgb, a = np.asarray(rgb, float), np.asarray(alpha, float)[..., None] / 255.0
    return rgb * a + 255.0 * (1 - a)
