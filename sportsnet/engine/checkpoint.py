"""Checkpoints: atomic writes, ``weights_only`` loads, and the RNG states that make resumes exact."""
from __future__ import annotations

import errno
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .distributed import all_gather_objects, rank_seed, world

log = logging.getLogger(__name__)


class CheckpointWriteError(OSError):
    """Saving failed; the previous checkpoint at the target path is untouched."""


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


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, flushed and
    fsynced, then renamed over ``path``. A crash or a full disk leaves the previous file intact."""
    if isinstance(path, dict) and not isinstance(state, dict):
        raise TypeError("save_checkpoint(path, state): the path comes first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            why = "the disk is full" if e.errno == errno.ENOSPC else str(e)
            kept = f"the previous {path.name} is intact" if path.exists() else "no previous checkpoint existed"
            raise CheckpointWriteError(e.errno, f"could not save checkpoint {str(path)!r}: {why}; {kept}") from e
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler's refusal, or a damaged file
        raise RuntimeError(
            f"refusing to load {str(path)!r}: it is not a plain weights/checkpoint file that loads with "
            f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy and torch (CPU and every CUDA device), as weights_only-safe types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_rng_states() -> dict[str, Any]:
    """``{"rng_ranks": [every rank's capture_rng_state()]}`` for a checkpoint under torchrun, ``{}`` in
    one process. A collective: every rank calls it, at the same point."""
    return {"rng_ranks": all_gather_objects(capture_rng_state())} if world()[1] > 1 else {}


def rank_rng_restorer(ckpt: dict[str, Any], seed: int, step: int) -> Callable[[], None]:
    """What restores this rank's RNG states from ``ckpt``: its own ones when the checkpoint holds
    every rank's (``rng_ranks``) for this world size. Otherwise (a one-process checkpoint, or another
    world size), rank 0 takes the saved ``rng`` and the other ranks start fresh streams, derived from
    the run's ``seed``, the resumed global ``step`` and the rank, apart from the loaders' epoch seeds."""
    rank, size = world()
    saved = ckpt.get("rng_ranks")
    if saved is not None and len(saved) == size:
        return lambda: restore_rng_state(saved[rank])
    if rank == 0:
        return lambda: restore_rng_state(ckpt["rng"])
    fresh = rank_seed(seed * 1_000_003 + 0x5EED0000 + step)
    return lambda: torch.manual_seed(fresh)  # type: ignore[return-value]


def describe_mismatch(model: nn.Module, state: dict[str, torch.Tensor], limit: int = 5) -> str:
    """A short account of why ``state`` does not fit ``model`` (keys missing, unexpected, mis-shaped)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    parts = []
    for label, items in (("shape mismatches", shapes), ("missing from the checkpoint", missing),
                         ("not in the model", unexpected)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {items[:limit]}{more}")
    return "; ".join(parts) or "no differences"
