import hashlib
import json

import numpy as np
import pytest
import torch

from sportsnet.data import SPORTS100_CLASSES, Captions, Sports100, make_synthetic_sports, read_boxes
from sportsnet.data.classnames import SPORTS100_PROMPT_NAMES
from sportsnet.data.synthetic_scene import class_objects


@pytest.fixture(scope="module")
def default_set(tmp_path_factory):
    return make_synthetic_sports(tmp_path_factory.mktemp("syn") / "default")


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_tree_is_the_real_layout_and_the_real_reader_reads_it(default_set):
    for split, n in (("train", 60), ("valid", 10), ("test", 10)):
        from_csv, from_folders = Sports100(default_set, split), Sports100(default_set, split, source="folders")
        assert from_csv.source == "csv" and from_csv.skipped == []
        assert from_csv.classes == from_folders.classes == SPORTS100_CLASSES[:10]
        assert sorted(from_csv.samples) == sorted(from_folders.samples)
        assert np.bincount(from_csv.targets).tolist() == [n] * 10
    img, _ = Sports100(default_set, "test")[0]
    assert img.size == (64, 64) and img.mode == "RGB"
    header = (default_set / "sports.csv").read_text().splitlines()[0]
    assert header == "class id,filepaths,labels,data set"


def test_boxes_cover_one_object_inside_the_image(default_set):
    boxes = read_boxes(default_set)
    assert len(boxes) == 800
    areas = []
    for (x0, y0, x1, y1) in boxes.values():
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        areas.append((x1 - x0) * (y1 - y0) / 64**2)
    assert 0.03 < min(areas) and max(areas) < 0.75


def _histograms(root, split, inside: bool):
    """Normalised 4x4x4 colour histograms of the pixels inside (or outside, with a 2 px margin for
    JPEG ringing) each image's object box."""
    ds, boxes = Sports100(root, split), read_boxes(root)
    feats = []
    for i, (path, _) in enumerate(ds.samples):
        a = np.asarray(ds.load(i)) // 64  # (64, 64, 3) in 0..3
        x0, y0, x1, y1 = boxes[ds.relpath(path)]
        mask = np.zeros(a.shape[:2], bool)
        if inside:
            mask[y0:y1, x0:x1] = True
        else:
            mask[:] = True
            mask[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = False
        codes = (a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2])[mask]
        feats.append(np.bincount(codes, minlength=64) / max(1, codes.size))
    return torch.tensor(np.array(feats), dtype=torch.float32), torch.tensor(ds.targets)


def _linear_probe_accuracy(root, inside):
    xtr, ytr = _histograms(root, "train", inside)
    held_out = [_histograms(root, split, inside) for split in ("valid", "test")]
    xte, yte = torch.cat([x for x, _ in held_out]), torch.cat([y for _, y in held_out])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 10)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(lin(xtr), ytr).backward()
        opt.step()
    return (lin(xte).argmax(1) == yte).float().mean().item()


def test_only_the_object_decides_the_class(default_set):
    # Colour statistics of the object box identify the class; everything outside it is at chance
    # (10 classes: 0.10; on 200 held-out images 0.2 is > 4 standard deviations above it; with
    # 1000 held-out images we measured 0.09-0.10 for seeds 0 and 3).
    assert _linear_probe_accuracy(default_set, inside=True) > 0.8
    assert _linear_probe_accuracy(default_set, inside=False) < 0.2


def test_captions_follow_the_flickr8k_kaggle_layout(default_set):
    test = Captions(default_set, "test", caption="first")
    assert test.layout == "kaggle" and len(test) == 100 and test.skipped == []
    for (path, _), caps in zip(test.samples, test.captions):
        sport = SPORTS100_PROMPT_NAMES.get(path.split("/")[-2], path.split("/")[-2])  # "amputee football", as written
        assert len(caps) == 1 and sport in caps[0]
    assert len(Captions(default_set, "train")) == 600


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    a = make_synthetic_sports(tmp_path / "a", num_classes=3, train_per_class=4, eval_per_class=2, size=32, seed=7)
    b = make_synthetic_sports(tmp_path / "b", num_classes=3, train_per_class=4, eval_per_class=2, size=32, seed=7)
    c = make_synthetic_sports(tmp_path / "c", num_classes=3, train_per_class=4, eval_per_class=2, size=32, seed=8)
    assert digest(a) == digest(b) != digest(c)
    # Each image has its own generator: growing train leaves valid untouched.
    d = make_synthetic_sports(tmp_path / "d", num_classes=3, train_per_class=9, eval_per_class=2, size=32, seed=7)
    assert digest(a / "valid") == digest(d / "valid")


def test_second_call_is_free_and_new_arguments_replace_the_set(tmp_path):
    root = make_synthetic_sports(tmp_path / "s", num_classes=4, train_per_class=2, eval_per_class=1, size=32)
    first = root / "train" / SPORTS100_CLASSES[0] / "001.jpg"
    stamp = first.stat().st_mtime_ns
    assert make_synthetic_sports(root, num_classes=4, train_per_class=2, eval_per_class=1, size=32) == root
    assert first.stat().st_mtime_ns == stamp
    make_synthetic_sports(root, num_classes=2, train_per_class=2, eval_per_class=1, size=32)
    assert json.loads((root / "synthetic.json").read_text())["num_classes"] == 2
    assert sorted(p.name for p in (root / "train").iterdir()) == SPORTS100_CLASSES[:2]
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folders left behind


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty and holds no synthetic.json"):
        make_synthetic_sports(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_hundred_classes_use_the_real_names_and_distinct_objects(tmp_path):
    root = make_synthetic_sports(tmp_path / "h", num_classes=100, train_per_class=1, eval_per_class=1, size=32)
    assert Sports100(root, "valid").classes == SPORTS100_CLASSES
    assert len(set(class_objects(100))) == 100
    first10 = class_objects(10)
    diffs = [sum(a != b for a, b in zip(vars(x).values(), vars(y).values()))
             for i, x in enumerate(first10) for y in first10[i + 1:]]
    assert min(diffs) >= 2


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes=1 must be an integer in"),
    ({"num_classes": 101}, "num_classes=101"),
    ({"size": 16}, "size=16 must be an integer >= 32"),
    ({"train_per_class": 0}, "train_per_class=0 must be a positive integer"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_sports(tmp_path / "x", **kwargs)
