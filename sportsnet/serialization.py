"""Reading and writing files: the one ``torch.load(weights_only=True)`` of the package, the one atomic
write (:func:`atomic_path`, used for checkpoints, JSON, reports, caches and dataset trees), and what to say
when a state dict does not fit a model.

The base layer: imports only torch and the standard library, so ``sportsnet.models`` (weights) and
``sportsnet.engine`` (checkpoints) both build on it. Loading tells three failures apart:

* the file does not exist: :class:`FileNotFoundError`;
* it is not a torch file, or a damaged one (empty, truncated, another format): :class:`NotATorchFileError`;
* ``weights_only=True`` refuses it (a pickle that would build arbitrary objects or run code, a
  TorchScript archive): :class:`UnsafeFileError`, also a :class:`pickle.UnpicklingError` as torch's own is.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import secrets
import shutil
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

__all__ = [
    "CheckpointWriteError", "Mismatch", "NotATorchFileError", "UnsafeFileError", "WeightsFileError",
    "atomic_path", "describe_mismatch", "find_mismatch", "load_checkpoint", "save_checkpoint", "write_json",
    "write_text",
]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_PROTO = 0x80  # the legacy format: pickles, protocol 2 and up, start with PROTO
# Words of torch's zip-reader errors (a cut-off file, or a zip archive that torch.save did not write).
_ARCHIVE_ERRORS = ("PytorchStreamReader", "inline_container", "archive")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)")


class WeightsFileError(RuntimeError):
    """A file that exists does not load as weights or a checkpoint (see the subclasses)."""


class NotATorchFileError(WeightsFileError):
    """The file is not a torch file (another format, empty) or a damaged one (truncated, corrupt)."""


class UnsafeFileError(WeightsFileError, pickle.UnpicklingError):
    """``torch.load(weights_only=True)`` refused the file: it holds objects other than tensors and
    plain containers (and might run code when unpickled), or it is a TorchScript archive."""


class CheckpointWriteError(OSError):
    """Saving failed; the previous file at the target path is untouched."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0].strip() if text else ""


def _refusal_detail(e: BaseException) -> str:
    """torch's verdict in one line: its first sentence and, when there is one, the unpickler's reason."""
    first = _first_line(e)
    m = _UNPICKLER_DETAIL.search(str(e))
    if m and m.group(1).strip():
        first = first.split(". ")[0].rstrip(".") + ". " + m.group(1).strip()
    return f"{type(e).__name__}: {first}"


def _check_header(path: Path, what: str) -> None:
    """Refuse, before unpickling anything, a file that starts like neither of torch's two formats."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise NotATorchFileError(f"{what} {str(path)!r} is empty (0 bytes), not a torch file")
    if head.startswith(_ZIP_MAGIC) or (head[0] == _PICKLE_PROTO and len(head) > 1 and 2 <= head[1] <= 5):
        return
    hint = (" (it looks like a safetensors file: read it with safetensors.torch.load_file)"
            if len(head) > 8 and head[8:9] == b"{" else "")
    raise NotATorchFileError(
        f"{what} {str(path)!r} is not a torch file: it starts with {head[:8]!r}, expected a zip archive "
        f"({_ZIP_MAGIC!r}, what torch.save writes) or a pickle (b'\\x80' and a protocol byte){hint}"
    )


def _unreadable(path: Path, what: str, e: BaseException) -> NotATorchFileError:
    return NotATorchFileError(f"{what} {str(path)!r} is not a readable torch file: damaged, truncated or of another "
                              f"format ({type(e).__name__}: {_first_line(e) or 'no detail'})")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary code.

    Args:
        path: a file written by ``torch.save`` (weights, a state dict, a checkpoint dict).
        map_location: where tensors go, as for ``torch.load``.
        what: how error messages name the file (``"checkpoint"``, ``"weights file"``...).

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        NotATorchFileError: the file is empty, of another format, or damaged (e.g. truncated).
        UnsafeFileError: ``weights_only=True`` refused it; nothing in it was executed.
    """
    path = Path(path)
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {str(path)!r} {why}")
    _check_header(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler's refusal
        refused: BaseException = e
    except RuntimeError as e:
        if "weights_only" in str(e):  # e.g. a TorchScript archive, which weights_only=True refuses
            refused = e
        elif any(word in str(e) for word in _ARCHIVE_ERRORS):  # a truncated, corrupt or foreign zip archive
            raise _unreadable(path, what, e) from e
        else:
            raise  # not about the file (e.g. a map_location this machine lacks): torch's words are clear
    except (EOFError, KeyError, ValueError, IndexError, OverflowError, struct.error) as e:  # a pickle cut short
        raise _unreadable(path, what, e) from e
    raise UnsafeFileError(
        f"refusing to load {str(path)!r}: it is not a plain weights/checkpoint file that loads with "
        f"weights_only=True ({_refusal_detail(refused)}); nothing in it was run. Load it with "
        f"weights_only=False only if you trust its source, and save its state dict again."
    ) from refused


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike, *, sync: bool = True) -> Iterator[Path]:
    """Write ``path`` all at once or not at all: yields a fresh temporary path beside it (same folder, so
    the rename cannot cross file systems) for the caller to create as a file or a folder; when the block
    ends normally the temporary takes ``path``'s place in one rename, and when it raises, the temporary is
    removed and ``path`` is untouched. A folder replaces an existing one by two renames (the old one is
    moved aside first, then deleted). ``sync`` flushes the file and the parent folder to disk (a crash
    right after then finds the new content, not an empty file).

    The one write-to-temporary-then-rename of the package: checkpoints, result JSON, reports, the
    decoded-image cache and the synthetic dataset all go through it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if sync and tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        if tmp.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if sync:
        _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``path`` holds ``obj`` as indented JSON (values JSON lacks, such as paths, as their ``str``),
    written atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`atomic_path`): a crash or a full disk leaves the
    previous file intact and no temporary behind.

    Raises:
        TypeError: the arguments are in the wrong order.
        CheckpointWriteError: writing failed (an :class:`OSError` with the cause's errno).
    """
    if isinstance(path, dict) and not isinstance(state, dict):
        raise TypeError("save_checkpoint(path, state): the path comes first")
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else str(e)
        kept = f"the previous {path.name} is intact" if path.exists() else "no previous checkpoint existed"
        raise CheckpointWriteError(e.errno, f"could not save checkpoint {str(path)!r}: {why}; {kept}") from e
    return path


@dataclass
class Mismatch:
    """How a saved state dict differs from a model's: mis-shaped, missing and unexpected keys."""

    shapes: list[str] = field(default_factory=list)  # "key: checkpoint (a, b) vs model (c, d)"
    missing: list[str] = field(default_factory=list)  # in the model, not in the saved state
    unexpected: list[str] = field(default_factory=list)  # in the saved state, not in the model
    saved: str = "checkpoint"  # how the saved side is named

    def __bool__(self) -> bool:
        return bool(self.shapes or self.missing or self.unexpected)

    def describe(self, limit: int = 5) -> str:
        """One line: each kind of difference with its count and at most ``limit`` keys."""
        parts = []
        for label, items in (("shape mismatches", self.shapes), (f"missing from the {self.saved}", self.missing),
                             ("not in the model", self.unexpected)):
            if items:
                more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
                parts.append(f"{len(items)} {label}: {items[:limit]}{more}")
        return "; ".join(parts) or "no differences"


def _shape(value: Any) -> tuple[int, ...] | str:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else f"({type(value).__name__}, not a tensor)"


def find_mismatch(model: nn.Module | Mapping[str, torch.Tensor], state: Mapping[str, Any], *, prefix: str = "",
                  optional: Callable[[str], bool] | None = None, saved: str = "checkpoint") -> Mismatch:
    """Compare ``state`` with ``model`` (a module or its state dict), over the keys starting with
    ``prefix``; keys for which ``optional(key)`` is true are not reported as missing."""
    own = model.state_dict() if isinstance(model, nn.Module) else model
    mine = [k for k in own if k.startswith(prefix)]
    theirs = [k for k in state if not isinstance(k, str) or k.startswith(prefix)]
    return Mismatch(
        shapes=[f"{k}: {saved} {_shape(state[k])} vs model {_shape(own[k])}"
                for k in mine if k in state and _shape(state[k]) != _shape(own[k])],
        missing=[k for k in mine if k not in state and not (optional and optional(k))],
        unexpected=[k for k in theirs if k not in own],
        saved=saved,
    )


def describe_mismatch(model: nn.Module | Mapping[str, torch.Tensor], state: Mapping[str, Any], limit: int = 5) -> str:
    """A short account of why ``state`` does not fit ``model`` (keys mis-shaped, missing, unexpected),
    at most ``limit`` keys per kind; ``"no differences"`` when it fits."""
    return find_mismatch(model, state).describe(limit)
