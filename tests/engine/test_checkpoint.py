"""sportsnet.engine.checkpoint: atomic writes, weights-only loads, RNG states."""
import errno
import random

import numpy as np
import pytest
import torch

from sportsnet.engine import (
    CheckpointWriteError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tests.support.trees import write_malicious_pickle


def test_checkpoint_save_is_atomic_when_the_disk_fills(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="disk is full; the previous last.pt is intact"):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left behind


def test_load_checkpoint_refuses_code_execution(tmp_path):
    evil, marker = tmp_path / "ckpt.pt", tmp_path / "pwned"
    write_malicious_pickle(evil, "model", marker)
    with pytest.raises(RuntimeError, match="refusing to load .*weights_only=True"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng_state()})
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
