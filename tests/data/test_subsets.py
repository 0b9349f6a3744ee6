from collections import Counter

import pytest
from torch.utils.data import Dataset

from sportsnet.data import LabeledSubset, few_shot_subset, fraction_subset, stratified_sample_indices, stratified_split


class Labels(Dataset):
    """Just targets and class names: the subsets only need those."""

    def __init__(self, per_class):
        self.classes = [f"c{i}" for i in range(len(per_class))]
        self.targets = [c for c, n in enumerate(per_class) for _ in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.targets[i]


def test_few_shot_takes_exactly_k_per_class_reproducibly():
    ds = Labels([10, 7, 3, 12])
    sub = few_shot_subset(ds, 3, seed=5)
    assert Counter(sub.targets) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert sub.classes == ds.classes and sub.indices == sorted(sub.indices)
    assert [ds[i][1] for i in sub.indices] == sub.targets
    assert few_shot_subset(ds, 3, seed=5).indices == sub.indices
    assert few_shot_subset(ds, 3, seed=6).indices != sub.indices


def test_few_shot_names_classes_that_are_too_small():
    with pytest.raises(ValueError, match=r"k=4 but 1 class\(es\) have fewer than 4 samples \('c2' has 3\).*k <= 3"):
        few_shot_subset(Labels([10, 7, 3, 12]), 4)
    with pytest.raises(ValueError, match="'c1' has 0"):
        few_shot_subset(Labels([2, 0, 2]), 1)
    with pytest.raises(ValueError, match="k=0 must be a positive integer"):
        few_shot_subset(Labels([2]), 0)


def test_fraction_and_split_are_stratified_disjoint_and_complete():
    ds = Labels([10, 7, 3, 20])
    rest, part = stratified_split(ds, 0.3, seed=1)
    assert Counter(part.targets) == {0: 3, 1: 2, 2: 1, 3: 6}
    assert sorted(rest.indices + part.indices) == list(range(len(ds)))
    assert fraction_subset(ds, 0.3, seed=1).indices == part.indices
    assert Counter(fraction_subset(ds, 0.01).targets) == {0: 1, 1: 1, 2: 1, 3: 1}
    with pytest.raises(ValueError, match=r"fraction=1.5 must be in \(0, 1\]"):
        fraction_subset(ds, 1.5)


def test_subsets_of_subsets_keep_classes_and_targets():
    ds = Labels([10, 10])
    inner = few_shot_subset(few_shot_subset(ds, 6, seed=0), 2, seed=1)
    assert isinstance(inner, LabeledSubset) and inner.classes == ["c0", "c1"]
    assert Counter(inner.targets) == {0: 2, 1: 2}


def test_unlabeled_datasets_are_refused():
    class NoTargets(Dataset):
        def __len__(self):
            return 3

    with pytest.raises(TypeError, match="NoTargets has no 'targets'"):
        few_shot_subset(NoTargets(), 1)


def _counts(labels, indices):
    return Counter(labels[i] for i in indices)


def test_stratified_sample_spreads_over_the_classes_in_the_original_order():
    labels = [c for c in range(10) for _ in range(50)]  # sorted by class, like a split's samples
    ix = stratified_sample_indices(labels, 200, seed=0)
    assert _counts(labels, ix) == {c: 20 for c in range(10)} and ix == sorted(ix) and len(set(ix)) == 200
    odd = _counts(labels, stratified_sample_indices(labels, 205, seed=0))
    assert sum(odd.values()) == 205 and max(odd.values()) - min(odd.values()) <= 1
    # The (path, label) samples of a dataset give the same pick as their labels.
    samples = [(f"{c}/{i:03d}.jpg", c) for i, c in enumerate(labels)]
    assert stratified_sample_indices(samples, 205, seed=0) == stratified_sample_indices(labels, 205, seed=0)


def test_stratified_sample_is_seeded():
    labels = [c for c in range(4) for _ in range(30)]
    first = stratified_sample_indices(labels, 10, seed=3)
    assert stratified_sample_indices(labels, 10, seed=3) == first
    assert stratified_sample_indices(labels, 10, seed=4) != first
    # Which classes get the one extra (10 = 3 + 3 + 2 + 2) follows the seed too.
    assert sorted(_counts(labels, first).values()) == [2, 2, 3, 3]
    assert len({tuple(sorted(_counts(labels, stratified_sample_indices(labels, 10, seed=s)).items()))
                for s in range(20)}) > 1


def test_stratified_sample_of_more_than_the_set_is_everything():
    labels = [0, 0, 1, 2, 2, 2]
    assert stratified_sample_indices(labels, 6) == stratified_sample_indices(labels, 100) == list(range(6))
    assert stratified_sample_indices([], 5) == []


def test_a_small_class_gives_what_it_has_and_the_others_make_up_the_rest():
    labels = [c for c, n in enumerate([3, 10, 10, 10]) for _ in range(n)]
    counts = _counts(labels, stratified_sample_indices(labels, 20, seed=1))  # share 5: class 0 has 3
    assert counts[0] == 3 and sum(counts.values()) == 20
    assert sorted(counts[c] for c in (1, 2, 3)) == [5, 6, 6]
    # Two short classes, exhausted at different levels; the rest stay within one of each other.
    labels = [c for c, n in enumerate([1, 4, 9, 9, 9]) for _ in range(n)]
    counts = _counts(labels, stratified_sample_indices(labels, 25, seed=0))
    assert (counts[0], counts[1]) == (1, 4) and sorted(counts[c] for c in (2, 3, 4)) == [6, 7, 7]


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_stratified_sample_names_a_bad_n(n):
    with pytest.raises(ValueError, match=f"n={n!r} must be a positive integer"):
        stratified_sample_indices([0, 1, 1], n)
