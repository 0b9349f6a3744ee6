"""Stratified, seeded subsets: k-shot, a fraction per class, a train/holdout split, and N images spread
evenly over the classes.

Each takes a dataset with ``targets`` (class index per sample) and ``classes``, and returns
:class:`LabeledSubset` views that keep both, so subsets of subsets work and evaluation still knows
the class names; :func:`few_shot_indices` and :func:`stratified_sample_indices` work on a plain label list
(or a ``(path, label)`` sample list). The same seed gives the same indices on every machine.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset, Subset


class LabeledSubset(Subset):
    """A ``Subset`` that keeps the parent's ``classes`` and exposes its own ``targets``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        super().__init__(dataset, list(indices))
        parent = _targets(dataset)
        self.targets = [parent[i] for i in self.indices]
        self.classes = list(getattr(dataset, "classes", []))


def _targets(dataset: Dataset) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no 'targets'; stratified subsets need class indices")
    return [int(t) for t in targets]


def _per_class(targets: Sequence[int], num_classes: int, seed: int) -> dict[int, list[int]]:
    """Indices of each class (every class in [0, num_classes), even empty ones), shuffled with ``seed``."""
    num_classes = max(num_classes, max(targets, default=-1) + 1)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(targets), generator=g).tolist()
    by_class: dict[int, list[int]] = {c: [] for c in range(num_classes)}
    for i in perm:
        if targets[i] >= 0:  # -1 marks unlabeled samples
            by_class[targets[i]].append(i)
    return by_class


def _name(classes: Sequence[str], c: int) -> str:
    return repr(classes[c]) if c < len(classes) else str(c)


def few_shot_indices(targets: Sequence[int], k: int, seed: int = 0, classes: Sequence[str] = ()) -> list[int]:
    """Sorted indices of exactly ``k`` samples per class (every class in ``classes``, or every label
    seen), chosen with ``seed``. Raises ``ValueError`` naming the classes with fewer than ``k``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer (images per class)")
    targets = [int(t) for t in targets]
    by_class = _per_class(targets, len(classes), seed)
    short = {c: len(ix) for c, ix in by_class.items() if len(ix) < k}
    if short:
        worst = sorted(short.items(), key=lambda kv: kv[1])[:5]
        names = ", ".join(f"{_name(classes, c)} has {n}" for c, n in worst)
        raise ValueError(
            f"k={k} but {len(short)} class(es) have fewer than {k} samples ({names}); "
            f"the smallest class allows k <= {min(len(ix) for ix in by_class.values())}"
        )
    return sorted(i for ix in by_class.values() for i in ix[:k])


def few_shot_subset(dataset: Dataset, k: int, seed: int = 0) -> LabeledSubset:
    """Exactly ``k`` samples of every class, chosen with ``seed``; indices sorted.

    Raises ``ValueError`` naming the classes that have fewer than ``k`` samples.
    """
    return LabeledSubset(dataset, few_shot_indices(_targets(dataset), k, seed, getattr(dataset, "classes", [])))


def stratified_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[LabeledSubset, LabeledSubset]:
    """Split into ``(rest, part)`` where ``part`` holds ``round(fraction * n_c)`` samples of each
    class (at least 1 of every non-empty class). Both keep class names; indices sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    part: list[int] = []
    rest: list[int] = []
    for ix in _per_class(_targets(dataset), len(getattr(dataset, "classes", [])), seed).values():
        n = min(len(ix), max(1, round(fraction * len(ix)))) if ix else 0
        part += ix[:n]
        rest += ix[n:]
    return LabeledSubset(dataset, sorted(rest)), LabeledSubset(dataset, sorted(part))


def fraction_subset(dataset: Dataset, fraction: float, seed: int = 0) -> LabeledSubset:
    """``round(fraction * n_c)`` samples of each class (at least 1), chosen with ``seed``."""
    return stratified_split(dataset, fraction, seed)[1]


def stratified_sample_indices(labels: Sequence[int] | Sequence[tuple[object, int]], n: int,
                              seed: int = 0) -> list[int]:
    """Indices of ``n`` samples spread over the classes as evenly as they allow, in the original order.

    ``labels`` is one label per sample, or a dataset's ``samples`` list of ``(path, label)``; every
    distinct label is a class (``-1``, unlabelled, too). Each class gets ``floor`` or ``ceil`` of its
    share; a class with fewer samples gives all it has, and what it lacks goes to the others (so
    the counts differ by at most one among the classes not exhausted). Which classes get the extra
    one, and which samples within each class, are drawn with ``seed``. ``n >= len(labels)`` returns
    every index. E.g. ``explain.py --limit`` with 10 classes: ``n=200`` takes 20 of each.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer (samples to keep)")
    labels = [int(x[1]) if isinstance(x, (tuple, list)) else int(x) for x in labels]
    if n >= len(labels):
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        by_class.setdefault(c, []).append(i)
    sizes = {c: len(ix) for c, ix in by_class.items()}
    # The level q: every class gives min(size, q), the most that fits in n (n < len(labels), so q < the largest
    # class); the rest, fewer than the classes larger than q, is one more from each of some of those.
    lo, hi = 0, max(sizes.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(k, mid) for k in sizes.values()) <= n else (lo, mid - 1)
    take = {c: min(k, lo) for c, k in sizes.items()}
    g = torch.Generator().manual_seed(seed)
    larger = [c for c in sorted(sizes) if sizes[c] > lo]
    for j in torch.randperm(len(larger), generator=g)[:n - sum(take.values())].tolist():
        take[larger[j]] += 1
    picked = []
    for c in sorted(by_class):
        ix = by_class[c]
        picked += [ix[j] for j in torch.randperm(len(ix), generator=g)[:take[c]].tolist()]
    return sorted(picked)
