"""Files skipped inside data-loader worker processes reach ``dataset.skipped`` in the main process.

A worker decodes with its own copy of the dataset; each skip it meets is appended to the dataset's
spool file and merged into ``skipped`` when the main process reads it, once per (path, reason),
however many workers or epochs meet the same file. See ``ImageListDataset.skipped``.
"""
from __future__ import annotations

import copy
import gc
import os
import pickle
import warnings

import pytest
from tests.support.trees import write_black_png, write_empty, write_truncated_png
from torch.utils.data import DataLoader

from sportsnet.data import Captions, LogicalRhythm, Skipped, Sports100, build_transforms, summarize_skipped
from sportsnet.data.cache import DecodedImages
from sportsnet.data.subsets import LabeledSubset
from tests.support.trees import make_sports_tree, write_image

A, B, C = "air hockey", "bike polo", "canoe slamon"


def html(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html>404 not found</html>")
    return path


# With the tree's 001.jpg ... 003.jpg of each class: 15 samples, 6 of them bad. Under batch_size=2,
# batch k (samples 2k, 2k+1) goes to worker k % 2. B/004.png (sample 8) falls back through C/000.png
# (two bad in a row); worker 0 meets C/004.png (13), falls back through C/005.png (14) and around
# through A/000.png (0), and worker 1 meets C/005.png and A/000.png again from sample 14: two files
# are met by both workers in one epoch.
BAD = {
    f"train/{A}/000.png": write_empty,
    f"train/{B}/002b.jpg": html,
    f"train/{B}/004.png": write_truncated_png,
    f"train/{C}/000.png": lambda p: write_black_png(p, 20000, 20000),
    f"train/{C}/004.png": write_truncated_png,
    f"train/{C}/005.png": lambda p: write_truncated_png(p, 20),
}


N = 15  # samples


@pytest.fixture
def tree(tmp_path):
    root = make_sports_tree(tmp_path / "sports", {"train": {A: 3, B: 3, C: 3}}, csv_release=None)
    for rel, writer in BAD.items():
        writer(root / rel)
    return root


def expected_skips(root) -> set[tuple[str, str]]:
    """(path, reason) of every bad file, as decoding in this process records them."""
    reference = Sports100(root, "train")
    return {(s.path, s.reason) for s in reference.verify()}


def epoch(dataset, **loader) -> int:
    """Iterate one epoch through a 2-worker loader; the number of samples seen."""
    loader = DataLoader(dataset, batch_size=2, num_workers=2, **loader)
    return sum(len(y) for _, y in loader)


def pairs(skipped) -> list[tuple[str, str]]:
    return [(s.path, s.reason) for s in skipped]


def test_reference_reasons_name_each_kind_of_damage(tree):
    reasons = dict(expected_skips(tree))
    assert set(reasons) == set(BAD)
    assert reasons[f"train/{A}/000.png"].startswith("unreadable image: UnidentifiedImageError")
    assert reasons[f"train/{C}/000.png"].startswith("unreadable image: DecompressionBombError")
    assert "truncated" in reasons[f"train/{B}/004.png"].lower()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_every_file_skipped_in_a_worker_is_in_the_parents_skipped_once(tree, context):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    assert len(ds) == N and ds.skipped == []
    assert epoch(ds, multiprocessing_context=context) == N
    got = pairs(ds.skipped)
    assert sorted(got) == sorted(expected_skips(tree))  # every bad file, with its reason, once
    assert len(set(got)) == len(got) == len(BAD)
    assert sum(summarize_skipped(ds.skipped).values()) == len(BAD)
    # The workers met some files more than once; the spool has every meeting, skipped each file once.
    with open(ds._spool_path) as fh:
        assert len(fh.readlines()) > len(BAD)


@pytest.mark.parametrize("persistent", [False, True])
def test_a_second_epoch_does_not_count_a_file_twice(tree, persistent):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=persistent)
    for _ in loader:
        pass
    first = pairs(ds.skipped)
    for _ in loader:
        pass
    assert pairs(ds.skipped) == first and len(first) == len(BAD)
    assert sorted(first) == sorted(expected_skips(tree))
    del loader


@pytest.mark.filterwarnings("ignore:.*pin_memory")
def test_pinned_memory_and_persistent_workers_report_the_same(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    assert epoch(ds, pin_memory=True, persistent_workers=True) == N
    assert sorted(pairs(ds.skipped)) == sorted(expected_skips(tree))


def test_verify_after_a_worker_epoch_does_not_duplicate(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    epoch(ds)
    dropped = ds.verify()
    assert sorted(pairs(dropped)) == sorted(expected_skips(tree))  # verify still says what it dropped
    assert len(ds) == N - len(BAD) and sorted(pairs(ds.skipped)) == sorted(expected_skips(tree))


def test_index_time_skips_stay_and_worker_skips_follow_them(tree):
    (tree / f"train/{A}/desktop.ini").write_text("[.ShellClassInfo]")
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    assert pairs(ds.skipped) == [(f"train/{A}/desktop.ini", "not an image file (.ini)")]
    epoch(ds)
    assert pairs(ds.skipped)[0] == (f"train/{A}/desktop.ini", "not an image file (.ini)")
    assert len(ds.skipped) == 1 + len(BAD)


def test_subsets_and_the_decoded_cache_see_the_datasets_skips(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    sub = LabeledSubset(ds, range(0, 8))  # A/000.png and B/002b.jpg (whose fallbacks are readable)
    epoch(sub)
    assert {s.path for s in ds.skipped} == {f"train/{A}/000.png", f"train/{B}/002b.jpg"}
    readable = Sports100(tree, "train", transform=build_transforms(False, 8))
    readable.samples = [s for s in readable.samples if readable.relpath(s[0]) not in BAD]
    cached = DecodedImages(readable, tree.parent / "cache")
    assert epoch(cached) == N - len(BAD) and cached.skipped == readable.skipped == []


def test_captions_and_logical_rhythm_report_worker_skips(tmp_path):
    root = tmp_path / "lr"
    (root / "train").mkdir(parents=True)
    rows = ["image,sports"]
    for i in range(6):
        write_image(root / "train" / f"{i}.jpg")
        rows.append(f"./train/{i}.jpg,{'wwe' if i % 2 else 'chess'}")
    write_empty(root / "train" / "1.jpg")
    write_truncated_png(root / "train" / "4.jpg")
    (root / "train_labels.csv").write_text("\n".join(rows) + "\n")
    lr = LogicalRhythm(root, "train", transform=build_transforms(False, 8))
    epoch(lr)
    assert {s.path for s in lr.skipped} == {"train/1.jpg", "train/4.jpg"} and len(lr.skipped) == 2

    croot = tmp_path / "flickr"
    lines = ["image,caption"]
    for i in range(6):
        write_image(croot / "Images" / f"{i}.jpg")
        lines.append(f"{i}.jpg,a photo number {i}")
    html(croot / "Images" / "2.jpg")
    (croot / "captions.txt").write_text("\n".join(lines) + "\n")
    caps = Captions(croot, "all", transform=build_transforms(False, 8), caption="first")
    assert sum(len(c) for _, c in DataLoader(caps, batch_size=2, num_workers=2)) == 6
    assert [s.path for s in caps.skipped] == ["2.jpg"] and caps.skipped[0].reason.startswith("unreadable image:")


def test_the_list_stays_the_datasets_own(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    ds.skipped.append(Skipped("by/hand.jpg", "flagged by the user"))
    epoch(ds)
    assert ("by/hand.jpg", "flagged by the user") in pairs(ds.skipped) and len(ds.skipped) == 1 + len(BAD)
    ds.skipped = []  # replaces everything recorded so far, spooled entries included
    assert ds.skipped == []
    assert "skipped=0" in repr(ds)


def test_pickled_and_copied_datasets_keep_their_entries_and_get_their_own_spool(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    epoch(ds)
    for make in (copy.deepcopy, lambda d: pickle.loads(pickle.dumps(d))):
        twin = make(ds)
        assert pairs(twin.skipped) == pairs(ds.skipped) and len(twin.skipped) == len(BAD)
        assert twin._spool_path != ds._spool_path
        epoch(twin)  # its workers report to it, not to ds
        assert len(twin.skipped) == len(BAD) and os.path.exists(twin._spool_path)
        path = twin._spool_path
        del twin
        gc.collect()
        assert not os.path.exists(path)
    assert len(ds.skipped) == len(BAD)


def test_a_dataset_pickled_before_skips_were_spooled_still_loads(tree):
    ds = Sports100(tree, "train")
    state = {k: v for k, v in ds.__getstate__().items() if not k.startswith("_spool")}
    state["skipped"] = state.pop("_skipped") + [Skipped("x.jpg", "old")]
    old = Sports100.__new__(Sports100)
    old.__setstate__(state)
    assert pairs(old.skipped) == [("x.jpg", "old")]
    old[0]  # A/000.png is bad: recorded in this process
    assert len(old.skipped) == 2


def test_the_spool_is_created_only_when_a_worker_skips_and_removed_with_the_dataset(tree, tmp_path):
    clean = Sports100(tree, "train", transform=build_transforms(False, 8))
    clean.samples = [s for s in clean.samples if clean.relpath(s[0]) not in BAD]
    epoch(clean)
    assert clean.skipped == [] and not os.path.exists(clean._spool_path)

    ds = Sports100(tree, "train", transform=build_transforms(False, 8))
    ds[0]  # a skip in this process goes straight to the list
    assert len(ds.skipped) == 1 and not os.path.exists(ds._spool_path)
    epoch(ds)
    path = ds._spool_path
    assert os.path.exists(path) and oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert len(ds.skipped) == len(BAD)
    del ds
    gc.collect()
    assert not os.path.exists(path)


def test_a_malformed_or_unfinished_spool_line_is_not_fatal(tree, caplog):
    ds = Sports100(tree, "train")
    with open(ds._spool_path, "w") as fh:
        fh.write('{"path": "a.jpg", "reason": "r"}\nnot json\n{"path": "b.jpg", "rea')
    with caplog.at_level("WARNING"):
        assert pairs(ds.skipped) == [("a.jpg", "r")]
    assert "malformed line" in caplog.text and "not json" in caplog.text
    with open(ds._spool_path, "a") as fh:
        fh.write('son": "s"}\n')  # the rest of the line a worker was writing
    assert pairs(ds.skipped) == [("a.jpg", "r"), ("b.jpg", "s")]


def test_strict_datasets_still_raise_in_workers(tree):
    ds = Sports100(tree, "train", transform=build_transforms(False, 8), strict=True)
    with pytest.raises(Exception, match="UnreadableImageError"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            epoch(ds)
    assert ds.skipped == []
