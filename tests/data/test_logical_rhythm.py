import csv

import pytest

from sportsnet.data import LogicalRhythm, stratified_split, summarize_skipped
from tests.support.trees import PALETTE, write_image

LABELS = {"1635.jpg": "wwe", "2.jpg": "badminton", "77.jpg": "chess", "8.jpg": "badminton", "9.jpg": "wwe"}


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "lr"
    classes = sorted(set(LABELS.values()))
    for name, label in LABELS.items():
        write_image(root / "train" / name, PALETTE[classes.index(label)])
    for name in ("10.jpg", "11.png"):
        write_image(root / "test" / name)
    (root / "test" / "Thumbs.db").write_text("x")
    with open(root / "train_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "sports"])
        w.writerows([f"./train/{n}", s] for n, s in LABELS.items())
    return root


def test_train_split_reads_labels_from_csv(root):
    ds = LogicalRhythm(root, "train")
    assert ds.classes == ["badminton", "chess", "wwe"] and ds.labeled
    got = {ds.relpath(p): ds.classes[t] for p, t in ds.samples}
    assert got == {f"train/{n}": s for n, s in LABELS.items()}
    img, t = ds[0]
    assert img.getpixel((2, 2)) == pytest.approx(PALETTE[t], abs=3)


def test_bare_image_names_are_looked_up_in_train(root):
    (root / "train_labels.csv").write_text("image,sports\n2.jpg,badminton\n9.jpg,wwe\n")
    assert len(LogicalRhythm(root, "train")) == 2


def test_test_split_is_unlabeled_and_counts_non_images(root):
    ds = LogicalRhythm(root, "test")
    assert ds.targets == [-1, -1] and not ds.labeled
    assert ds.classes == ["badminton", "chess", "wwe"]
    assert summarize_skipped(ds.skipped) == {"not an image file": 1}


def test_missing_images_are_skipped_and_counted(root):
    (root / "train" / "77.jpg").unlink()
    ds = LogicalRhythm(root, "train")
    assert len(ds) == 4 and [s.path for s in ds.skipped] == ["./train/77.jpg"]


def test_write_submission(root, tmp_path):
    ds = LogicalRhythm(root, "test")
    out = ds.write_submission([2, 0], tmp_path / "sub" / "submission.csv")
    assert out.read_text().splitlines() == ["image,sports", "./test/10.jpg,wwe", "./test/11.png,badminton"]
    with pytest.raises(ValueError, match="prediction 3 .* not a class index"):
        ds.write_submission([3, 0], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="got 1 predictions for 2 images"):
        ds.write_submission([0], tmp_path / "x.csv")


def test_holdout_for_validation_is_stratified(root):
    rest, held = stratified_split(LogicalRhythm(root, "train"), 0.5, seed=1)
    assert sorted(held.targets) == [0, 1, 2]  # one of each class (2 badminton, 1 chess, 2 wwe)
    assert set(rest.indices).isdisjoint(held.indices) and len(rest) + len(held) == 5


def test_bad_input_is_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        LogicalRhythm(tmp_path / "nope")
    with pytest.raises(ValueError, match="split='valid'"):
        LogicalRhythm(root, "valid")
    (root / "train_labels.csv").write_text("image,sports\n../../etc/passwd,wwe\n")
    with pytest.raises(ValueError, match="points outside the dataset root"):
        LogicalRhythm(root, "train")
    (root / "train_labels.csv").write_text("file,label\n1.jpg,wwe\n")
    with pytest.raises(ValueError, match=r"columns \['file', 'label'\]; expected 'image,sports'"):
        LogicalRhythm(root, "train")
    (root / "train_labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="train_labels.csv"):
        LogicalRhythm(root, "train")
