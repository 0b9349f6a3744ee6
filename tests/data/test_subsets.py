from collections import Counter

import pytest
from torch.utils.data import Dataset

from sportsnet.data import LabeledSubset, few_shot_subset, fraction_subset, stratified_split


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
