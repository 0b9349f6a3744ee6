"""fit in a 2-process gloo group: every rank augments with its own random stream (main-process draws,
dropout, data-loader worker seeds), and a mid-epoch resume with the same world size continues every
rank's stream exactly, not rank 0's on all of them."""
import os
import signal
import socket

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset

from sportsnet.engine import FitOptions, Phase, TrainingInterrupted, fit, load_checkpoint
from sportsnet.engine.distributed import ShardSampler, any_rank, rank_seed

STEPS = 6  # per epoch and rank: 48 images / 2 ranks / batch 4


class WorkerAugmented(Dataset):
    """Images whose last channel is filled, in the loader's worker, with that worker's random draw."""

    def __init__(self, n: int = 48):
        g = torch.Generator().manual_seed(0)
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.randn(n, 4, 6, 6, generator=g) + self.y.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i].clone()
        x[3] = torch.rand(())
        return x, self.y[i]


def _free_ports(n: int = 1) -> list[int]:
    """``n`` distinct free ports (the sockets are held together, so no two get the same one)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _run(run_dir, resume=None, stop_at=None):
    """Two epochs; returns the net and, per step, (worker draws, main-process draws) of this rank."""
    torch.manual_seed(0)  # as train_vgg19 does: the same initial weights on every rank
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    data = WorkerAugmented()
    train = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, shuffle=True, seed=0, drop_last=True),
                       num_workers=1, generator=torch.Generator(), drop_last=True)
    val = DataLoader(TensorDataset(data.x, data.y), batch_size=8, sampler=ShardSampler(data))
    draws, calls = [], []

    def augment(x):  # a batch transform on the training device, like sportsnet.data.batch_aug
        d = torch.rand(x.shape[0])
        draws.append(torch.stack([x[:, 3, 0, 0], d]))
        return x + 0.1 * d.view(-1, 1, 1, 1)

    def loss(logits, target):
        calls.append(1)
        if len(calls) == stop_at:  # every rank is signalled at the same step
            os.kill(os.getpid(), signal.SIGTERM)
        return nn.functional.cross_entropy(logits, target)

    fit(net, [Phase("p", 2, 0.05, {"all": list(net.parameters())})], train, val, loss_fn=loss,
        device=torch.device("cpu"), classes=["a", "b"], run_dir=run_dir, resume=resume, train_transform=augment,
        options=FitOptions(progress=False, channels_last=False, seed=3))
    return net, draws


def _worker(rank, world, port, out_dir):
    import multiprocessing

    import torch.distributed as dist

    # As under torchrun, whose ranks are plain interpreters: loader workers fork. (mp.spawn's children inherit
    # "spawn", and every loader worker would then import torch and this module again, seconds each.)
    multiprocessing.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        straight, straight_draws = _run(os.path.join(out_dir, "straight"))
        stopped = os.path.join(out_dir, "stopped")
        try:
            _run(stopped, stop_at=STEPS + 3)  # step 3 of epoch 2
            raise AssertionError("the signal did not stop fit")
        except TrainingInterrupted as e:
            ckpt = load_checkpoint(e.checkpoint)
        resumed, resumed_draws = _run(stopped, resume=ckpt)
        torch.save({"straight_draws": straight_draws, "resumed_draws": resumed_draws,
                    "straight": straight.state_dict(), "resumed": resumed.state_dict(), "ckpt": ckpt},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_draw_apart_and_resume_their_own_streams(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, *_free_ports(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for r in (r0, r1):
        assert len(r["straight_draws"]) == 2 * STEPS
    # Worker draws (row 0) and main-process draws (row 1) differ between the ranks at every step.
    for a, b in zip(r0["straight_draws"], r1["straight_draws"]):
        assert not torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    ckpt = r0["ckpt"]
    assert ckpt["world_size"] == 2 and ckpt["step_in_epoch"] == 3 and len(ckpt["rng_ranks"]) == 2
    assert torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng"]["torch"])
    assert not torch.equal(ckpt["rng_ranks"][1]["torch"], ckpt["rng"]["torch"])
    for r in (r0, r1):
        # The resumed run skips the 3 steps already taken, then draws exactly what the uninterrupted
        # run drew on this rank, and ends with the same weights.
        assert len(r["resumed_draws"]) == STEPS - 3
        for a, b in zip(r["resumed_draws"], r["straight_draws"][-(STEPS - 3):]):
            assert torch.equal(a, b)
        for k, v in r["straight"].items():
            assert torch.equal(v, r["resumed"][k]), k


def test_rank_seed():
    assert rank_seed(7, 0) == 7 and rank_seed(-5, 0) == -5  # rank 0 draws what one process draws
    seeds = {rank_seed(7, r) for r in range(64)} | {rank_seed(8, r) for r in range(64)}
    assert len(seeds) == 128 and all(0 <= s < 2**63 for s in seeds)
    try:
        rank_seed(7, -1)
    except ValueError as e:
        assert "rank=-1 must be >= 0" in str(e)
    else:
        raise AssertionError("a negative rank was accepted")


def _vote_worker(rank, world, port, port2, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # Only rank 1 raises its flag, at the third call: every rank hears it at that call.
        answers = [any_rank(rank == 1 and k == 2) for k in range(4)]
        dist.destroy_process_group()  # a new process group gets a new host group
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port2}", rank=rank, world_size=world)
        answers.append(any_rank(rank == 0))
        torch.save(answers, os.path.join(out_dir, f"votes{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_any_rank_agrees_when_one_rank_asks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_vote_worker, args=(2, *_free_ports(2), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        assert torch.load(tmp_path / f"votes{r}.pt", weights_only=True) == [False, False, True, False, True]
