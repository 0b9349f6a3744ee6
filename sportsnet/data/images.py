"""Image files: decoding to RGB, safe paths under a dataset root, and skip bookkeeping.

Every reader in ``sportsnet.data`` decodes through :func:`load_rgb` and records what it leaves out
as :class:`Skipped` entries, so a run can report exactly which files were dropped and why, including
those that data-loader worker processes met (they report them through a spool file, see
:attr:`ImageListDataset.skipped`).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import tempfile
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

#: Extensions (lower case) treated as images; anything else in a class folder is skipped and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class UnreadableImageError(OSError):
    """An image file that exists but cannot be decoded (truncated, not an image, too large...)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        # Without the path (PIL repeats it), so summarize_skipped groups files with the same cause.
        self.reason = reason.replace(f"'{self.path}'", "").replace(self.path, "").replace("  ", " ").strip()
        super().__init__(f"cannot decode image {self.path!r}: {reason}")

    def __reduce__(self):  # picklable, so a data-loader worker's error reaches the parent as itself
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class Skipped:
    """One dataset entry left out: the path (relative to the root when possible) and why."""

    path: str
    reason: str


def summarize_skipped(skipped: Sequence[Skipped]) -> dict[str, int]:
    """Count skipped entries per reason, e.g. ``{"not an image file (.lnk)": 1}``."""
    return dict(Counter(s.reason for s in skipped))


def is_image_file(path: str | os.PathLike) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def resolve_under(root: str | os.PathLike, relpath: str) -> Path:
    """Join ``relpath`` (from a CSV or list file) to ``root``, refusing paths that leave the root.

    The check is lexical (``..`` and absolute paths), so a root that is itself a symlink, or holds
    symlinked split folders, keeps working.
    """
    rel = relpath.strip().replace("\\", "/")
    if rel.startswith("./"):
        rel = rel[2:]
    if not rel or os.path.isabs(rel) or Path(rel).drive:
        raise ValueError(f"path {relpath!r} must be relative to the dataset root {str(root)!r}")
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise ValueError(
            f"path {relpath!r} points outside the dataset root {str(root)!r}; "
            "expected a path inside it such as 'train/<class>/<file>.jpg'"
        )
    return Path(root) / norm


def entry_is(entry: os.DirEntry, kind: str) -> bool:
    """``entry.is_dir()`` / ``is_file()`` that answers False for a link it cannot follow (a link to
    itself raises ELOOP) instead of raising, so a folder scan skips such entries."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError:
        return False


# EXIF orientation -> the transposition that undoes it (applied without re-writing the EXIF block,
# which fails on files whose other tags have unexpected types).
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:  # an unparsable EXIF block: the pixels are still fine, keep them as stored
        return 1


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file to an RGB PIL image.

    EXIF orientation is applied; grayscale, palette, 16-bit, RGBA and CMYK files are converted to RGB.
    Raises :class:`UnreadableImageError` (naming the file and the cause) for anything that cannot be
    fully decoded: a truncated file, a non-image, or a decompression bomb (more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``, refused from the header, before decoding). Thread-safe: it
    changes no process-wide state (``verify`` calls it from a thread pool).
    """
    try:
        with Image.open(path) as img:  # reads the header only; PIL raises itself above 2x the limit
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.width * img.height > limit:
                raise UnreadableImageError(path, f"decompression bomb: {img.width}x{img.height} = "
                                                 f"{img.width * img.height} pixels exceeds the limit of {limit} "
                                                 f"(PIL.Image.MAX_IMAGE_PIXELS)")
            img.load()
            turn = _ORIENTATION.get(_orientation(img))
            out = img.transpose(turn) if turn is not None else img
            return _to_rgb(out)
    except (FileNotFoundError, UnreadableImageError):
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e
    except (OSError, SyntaxError, ValueError, TypeError, struct.error) as e:  # truncated or corrupt data
        raise UnreadableImageError(path, f"{type(e).__name__}: {e}") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping (PIL's convert("L") clips at 255).
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        top = float(a.max(initial=0))
        # Older Pillows open 16-bit PNGs as mode I: infer the bit depth from the values there.
        hi = 65535.0 if img.mode.startswith("I;16") or 255 < top <= 65535 else 255.0 if top <= 255 else top
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")  # uint8 2-D -> mode L
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))  # transparent -> white, not black
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


# Opening a spool file never follows a symlink planted at its (random) name, where the OS can refuse.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _remove_spool(path: str, owner: int) -> None:
    """Delete a dataset's spool file; only in the process that made the dataset (a forked worker's copy
    of the dataset, collected in the worker, must not delete the file the main process still reads)."""
    if os.getpid() != owner:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.debug("could not remove the skipped-files spool %s: %s", path, e)


class ImageListDataset(Dataset):
    """Map-style dataset over ``(path, class index)`` pairs with skip bookkeeping.

    Attributes:
        samples: list of ``(absolute path, class index)``; ``targets`` the class indices.
        classes: class names in class-index order.
        skipped: :class:`Skipped` entries left out while indexing, verifying or loading, including
            those met by data-loader worker processes (see the property).

    With ``strict=False`` an image that fails to decode at load time is recorded in ``skipped`` and
    replaced by the next decodable sample (so a data-loader worker never dies mid-epoch); call
    :meth:`verify` first to drop such files up front. With ``strict=True`` the first unreadable image
    raises :class:`UnreadableImageError`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        samples: list[tuple[str, int]],
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None = None,
        skipped: list[Skipped] | None = None,
        strict: bool = False,
    ):
        self.root = Path(root)
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self._skipped: list[Skipped] = list(skipped or [])
        self.strict = strict
        self._bad: set[int] = set()
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        self._new_spool()

    # -- skip bookkeeping across processes ------------------------------------------------------
    #
    # A data-loader worker holds a copy of the dataset (pickled for spawn/forkserver, the parent's
    # memory for fork), so what it appends to its own list never reaches the main process. Instead a
    # process other than the one that made the dataset (``_spool_owner``) appends one JSON line per
    # skip to the dataset's spool file, opened with O_APPEND: one small write() per line, so lines of
    # several workers never interleave. Reading ``skipped`` merges the complete lines written since the
    # last read into the list, once per (path, reason). The file is created by the first worker that
    # skips something and deleted when the dataset is garbage-collected or the main process exits.

    def _new_spool(self) -> None:
        """Give this dataset object its own (not yet created) spool file, removed with the object."""
        self._spool_owner = os.getpid()
        self._spool_path = os.path.join(
            tempfile.gettempdir(), f"sportsnet-skipped-{self._spool_owner}-{secrets.token_hex(12)}.jsonl")
        self._spool_read = 0  # bytes of the spool already merged into _skipped
        weakref.finalize(self, _remove_spool, self._spool_path, self._spool_owner)

    def _lock_here(self) -> threading.Lock:
        """This process's lock over the skip list (a lock copied by fork may be held by a thread the
        child does not have)."""
        if getattr(self, "_lock_pid", None) != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def _add_unique(self, entries: Iterable[Skipped]) -> None:
        """Append the entries whose (path, reason) the list does not hold yet. Call under the lock."""
        seen = {(s.path, s.reason) for s in self._skipped}
        for s in entries:
            if (s.path, s.reason) not in seen:
                seen.add((s.path, s.reason))
                self._skipped.append(s)

    def _merge_spool(self) -> None:
        """Move the complete lines that workers appended to the spool since the last call into the list.
        Call under the lock."""
        try:
            fd = os.open(self._spool_path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:  # no worker has skipped anything (yet)
            return
        except OSError as e:
            log.warning("cannot read the skipped-files spool %s of %s: %s; files skipped in data-loader workers "
                        "are missing from 'skipped'", self._spool_path, self.root, e)
            return
        with os.fdopen(fd, "rb") as fh:
            fh.seek(self._spool_read)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        if not end:
            return
        self._spool_read += end
        entries = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
                entries.append(Skipped(str(record["path"]), str(record["reason"])))
            except (ValueError, KeyError, TypeError) as e:
                log.warning("ignoring a malformed line in the skipped-files spool %s: %r (%s); expected a JSON "
                            "object with 'path' and 'reason'", self._spool_path, line[:200], e)
        self._add_unique(entries)

    def _spool_append(self, entry: Skipped) -> bool:
        """Report ``entry`` to the process that made the dataset; False if the spool cannot be written."""
        line = (json.dumps({"path": entry.path, "reason": entry.reason}) + "\n").encode()
        try:
            fd = os.open(self._spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
            try:
                written = os.write(fd, line)  # one write on an O_APPEND file: never interleaved with another
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("cannot report skipped file %s to the main process through %s (%s); it is recorded in "
                        "this process only", entry.path, self._spool_path, e)
            return False
        if written != len(line):
            log.warning("short write (%d of %d bytes) to the skipped-files spool %s; %s is recorded in this "
                        "process only", written, len(line), self._spool_path, entry.path)
            return False
        return True

    def _record_skip(self, entry: Skipped) -> None:
        """Record one skipped entry: in the list here, or through the spool from another process."""
        if os.getpid() != self._spool_owner and self._spool_append(entry):
            return
        with self._lock_here():
            self._add_unique([entry])

    @property
    def skipped(self) -> list[Skipped]:
        """:class:`Skipped` entries left out while indexing, verifying or loading.

        Includes what data-loader worker processes skipped up to now (merged in from the spool when
        this is read), so read it after the epoch, or again later for the files met since. A file
        found unreadable by several workers, in several epochs or again by :meth:`verify` is listed
        once per (path, reason). The list is the dataset's own: appending to it records an entry.
        """
        with self._lock_here():
            self._merge_spool()
            return self._skipped

    @skipped.setter
    def skipped(self, entries: Iterable[Skipped]) -> None:
        """Replace every entry recorded so far (spooled worker entries included) by ``entries``."""
        with self._lock_here():
            self._merge_spool()
            self._skipped = list(entries)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock_here():
            if os.getpid() == self._spool_owner:
                self._merge_spool()  # a copy made here starts with every entry known so far
            state = dict(self.__dict__)
        del state["_lock"], state["_lock_pid"]  # locks do not pickle; each process makes its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "skipped" in state:  # pickled before skips were spooled: a plain list attribute
            state["_skipped"] = state.pop("skipped")
        self.__dict__.update(state)
        self._lock, self._lock_pid = threading.Lock(), os.getpid()
        if getattr(self, "_spool_owner", None) in (None, os.getpid()):
            # A copy in the process that made the dataset (copy.deepcopy, a pickle round trip) is a
            # dataset of its own: its own spool, removed with it. A worker's copy reports to the original.
            self._new_spool()

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def relpath(self, path: str | os.PathLike) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image of sample ``index`` (no transform, no fallback)."""
        return load_rgb(self.samples[index][0])

    def load_with_fallback(self, index: int) -> tuple[int, Image.Image]:
        """Decode sample ``index``; if it is unreadable (and not strict), record it and move on to the
        next decodable sample. Returns the index actually used and its RGB image."""
        n = len(self.samples)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            path = self.samples[i][0]
            try:
                return i, load_rgb(path)
            except UnreadableImageError as e:
                if self.strict:
                    raise
                self._bad.add(i)
                self._record_skip(Skipped(self.relpath(path), f"unreadable image: {e.reason}"))
                log.warning("skipping unreadable image %s (%s)", path, e.reason)
        raise UnreadableImageError(self.root, f"none of the {n} images in the dataset could be decoded")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        i, img = self.load_with_fallback(index)
        return (self.transform(img) if self.transform is not None else img), self.samples[i][1]

    def verify(self) -> list[Skipped]:
        """Decode every image once; drop unreadable ones from ``samples`` and record them.

        Returns the entries skipped by this call (``skipped`` holds each of them once, also when a
        data-loader worker met the file before). Under ``strict=True`` the first failure raises.
        """
        from concurrent.futures import ThreadPoolExecutor

        def check(path: str) -> str | None:
            try:
                load_rgb(path)
            except UnreadableImageError as e:
                if self.strict:
                    raise
                return e.reason
            return None

        # PIL releases the GIL while decoding, so threads give real parallelism here.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            reasons = list(pool.map(check, [p for p, _ in self.samples]))
        new = [
            Skipped(self.relpath(p), f"unreadable image: {r}")
            for (p, _), r in zip(self.samples, reasons)
            if r is not None
        ]
        self.samples = [s for s, r in zip(self.samples, reasons) if r is None]
        self._bad.clear()
        with self._lock_here():
            self._merge_spool()
            self._add_unique(new)
        if new:
            log.warning("%s: %d unreadable images skipped", self.root, len(new))
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, "
            f"classes={len(self.classes)}, skipped={len(self.skipped)})"
        )
