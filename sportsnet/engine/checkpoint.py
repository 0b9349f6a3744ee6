"""Checkpoints: the RNG states that make resumes exact, per rank under torchrun.

Saving and loading themselves (atomic writes, ``weights_only`` loads, mismatch descriptions) live in
:mod:`sportsnet.serialization`, shared with :mod:`sportsnet.models`; they are re-exported here.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch

from ..serialization import CheckpointWriteError, describe_mismatch, load_checkpoint, save_checkpoint
from .distributed import all_gather_objects, rank_seed, world

__all__ = [
    "CheckpointWriteError", "capture_rng_state", "describe_mismatch", "load_checkpoint", "rank_rng_restorer",
    "rank_rng_states", "restore_rng_state", "save_checkpoint",
]


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
    """Set Python's, NumPy's and torch's RNGs (and CUDA's, where saved and present) from :func:`capture_rng_state`."""
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
