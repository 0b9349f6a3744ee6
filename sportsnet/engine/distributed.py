"""Multi-process helpers for runs under ``torchrun``: joining the process group, the rank queries,
sums across ranks, and an unpadded evaluation sharding. Every helper is the identity (or rank 0 of
1) in a plain single-process run, so the training code has one path."""
from __future__ import annotations

import os
import weakref
from typing import Any, Iterator, Sized

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def init_from_env(device: str = "auto") -> torch.device | None:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL with one GPU per
    process (``cuda:LOCAL_RANK``) when CUDA is there and ``device`` is ``auto`` or ``cuda``, else gloo
    on CPU. Returns this process's device, or ``None`` when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if world()[1] == 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    return dev


def shutdown() -> None:
    """Leave the process group together: no rank tears it down while another still uses it."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (in place, and returned)."""
    if world()[1] > 1:
        dist.all_reduce(t)
    return t


# Weak references: torch's registry owns the groups. A group that outlives destroy_process_group()
# through a reference of ours aborts the process when it is finally freed (gloo's threads).
_host_refs: tuple[weakref.ref, weakref.ref] | None = None  # (the default group, the host group)


def _host_group():
    """A gloo group over every rank, for small agreements between the hosts (created on first use;
    all ranks get there together; created anew for a new process group). Its collectives take CPU
    tensors, so with NCCL training they never wait for the GPU's queued work, as a CUDA all-reduce
    read back with ``.item()`` would."""
    global _host_refs
    default = dist.group.WORLD
    group = _host_refs[1]() if _host_refs is not None and _host_refs[0]() is default else None
    if group is None:
        group = dist.new_group(backend="gloo")
        _host_refs = (weakref.ref(default), weakref.ref(group))
    return group


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any. All ranks must call it at the same point
    (it is a collective): it decides, e.g., after which step every rank stops. A host-side all-reduce
    over gloo, so asking after every training step costs no GPU synchronisation."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_host_group())
    return bool(t.item())


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (e.g. BatchNorm running statistics, which each rank updates from its own
    batches) on every rank, so all ranks evaluate, and rank 0 saves, the same model."""
    if world()[1] > 1:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed of ``rank``'s own random stream (default: this process's rank), derived from ``seed``.

    Rank 0 gets ``seed`` itself, so rank 0 of a torchrun job draws what a single process draws; every
    other rank gets a distinct seed, so ranks do not repeat each other's augmentation, dropout masks
    or data-loader worker seeds."""
    r = world()[0] if rank is None else rank
    if r < 0:
        raise ValueError(f"rank={r} must be >= 0")
    if r == 0:
        return seed
    return (seed + r * 0x9E3779B97F4A7C15) % (1 << 63)  # odd constant: distinct for every rank below 2**63


def start_rank_stream(seed: int) -> None:
    """At the start of a fresh run, after every rank was seeded alike (for the same initial weights):
    ranks > 0 reseed the global generators from ``rank_seed(seed)``; rank 0 keeps its stream."""
    if world()[0] > 0:
        torch.manual_seed(rank_seed(seed))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process). Over the
    host-side gloo group: no GPU round trip, whatever the training backend."""
    if world()[1] == 1:
        return [obj]
    out: list[Any] = [None] * world()[1]
    dist.all_gather_object(out, obj, group=_host_group())
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a run folder name containing a timestamp)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset, in order and without padding, so the shards'
    summed metrics are exactly those of one process over the whole set (``DistributedSampler``
    pads with repeated samples to equalise shards, which would count some images twice)."""

    def __init__(self, data: Sized, rank: int | None = None, world_size: int | None = None):
        r, w = world()
        self.n = len(data)
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
