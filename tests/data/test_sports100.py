import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sportsnet.data import Sports100, UnreadableImageError, build_transforms, summarize_skipped
from tests.support.trees import PALETTE, make_sports_tree, write_image, write_sports_csv, write_truncated_jpeg

COUNTS = {
    "train": {"bike polo": 3, "air hockey": 4, "canoe slamon": 2},
    "valid": {"air hockey": 1, "bike polo": 1, "canoe slamon": 1},
    "test": {"air hockey": 2, "canoe slamon": 1},
}


def rel_samples(ds):
    return sorted((ds.relpath(p), t) for p, t in ds.samples)


@pytest.fixture
def tree(tmp_path):
    return make_sports_tree(tmp_path / "sports", COUNTS, csv_release=None)


def test_folders_give_alphabetical_classes_and_folder_labels(tree):
    ds = Sports100(tree, "train")
    assert ds.source == "folders"
    assert ds.classes == ["air hockey", "bike polo", "canoe slamon"]
    assert len(ds) == 9 and ds.skipped == []
    for path, target in ds.samples:
        assert path.split("/")[-2] == ds.classes[target]
    img, target = ds[0]
    assert img.mode == "RGB" and img.getpixel((3, 3)) == pytest.approx(PALETTE[target], abs=3)


def test_eval_splits_use_train_class_indices(tree):
    test = Sports100(tree, "test")  # has no "bike polo" folder: indices must still follow train
    assert test.classes == ["air hockey", "bike polo", "canoe slamon"]
    assert sorted(test.targets) == [0, 0, 2]


@pytest.mark.parametrize("release", ["new", "old"])
def test_both_csv_releases_agree_with_the_folders(tmp_path, release):
    root = make_sports_tree(tmp_path / "s", COUNTS, csv_release=release)
    for split in ("train", "valid", "test"):
        from_csv = Sports100(root, split)
        assert from_csv.source == "csv"
        from_folders = Sports100(root, split, source="folders")
        assert from_csv.classes == from_folders.classes
        assert rel_samples(from_csv) == rel_samples(from_folders)


def test_csv_class_id_that_disagrees_with_alphabetical_order_is_an_error(tmp_path):
    root = make_sports_tree(tmp_path / "s", COUNTS, csv_release=None)
    write_sports_csv(root, [[0, "train/bike polo/001.jpg", "bike polo", "train"],
                            [1, "train/air hockey/001.jpg", "air hockey", "train"]])
    with pytest.raises(ValueError, match=r"class id 0 for 'bike polo'.*expected 1"):
        Sports100(root, "train")


def test_grayscale_and_cmyk_images_convert_to_rgb(tree):
    write_image(tree / "train/air hockey/gray.jpg", (90, 90, 90), mode="L")
    write_image(tree / "train/air hockey/cmyk.jpg", PALETTE[2], mode="CMYK")
    write_image(tree / "train/air hockey/rgba.png", PALETTE[1], mode="RGBA")
    write_image(tree / "train/air hockey/deep.png", (128, 128, 128), mode="I;16")
    ds = Sports100(tree, "train")
    by_name = {p.rsplit("/", 1)[-1]: i for i, (p, _) in enumerate(ds.samples)}
    expected = {"gray.jpg": (90, 90, 90), "cmyk.jpg": PALETTE[2], "rgba.png": PALETTE[1], "deep.png": (128,) * 3}
    for name, colour in expected.items():
        img, _ = ds[by_name[name]]
        assert img.mode == "RGB", name
        assert np.asarray(img)[5, 5] == pytest.approx(colour, abs=6), name


def test_non_image_files_are_skipped_and_counted(tree):
    (tree / "train/air hockey/desktop.ini").write_text("x")
    (tree / "train/stray.lnk").write_text("x")
    ds = Sports100(tree, "train")
    assert len(ds) == 9
    assert summarize_skipped(ds.skipped) == {"not an image file (.ini)": 1, "not a class folder": 1}
    assert {s.path for s in ds.skipped} == {"train/air hockey/desktop.ini", "train/stray.lnk"}


def test_csv_entries_that_are_not_images_or_are_missing_are_skipped_and_counted(tmp_path):
    root = make_sports_tree(tmp_path / "s", COUNTS, csv_release=None)
    rows = [[0, "train/air hockey/001.jpg", "air hockey", "train"],
            [0, "train/air hockey/notes.txt", "air hockey", "train"],
            [1, "train/bike polo/404.jpg", "bike polo", "train"]]
    write_sports_csv(root, rows)
    ds = Sports100(root, "train")
    assert len(ds) == 1
    assert summarize_skipped(ds.skipped) == {"not an image file (.txt)": 1,
                                             "listed in sports.csv but missing on disk": 1}


def test_truncated_jpeg_is_skipped_with_a_count_or_raises_under_strict(tree):
    bad = write_truncated_jpeg(tree / "train/air hockey/000.jpg")  # sorts first: sample 0
    ds = Sports100(tree, "train")
    assert ds.samples[0][0] == str(bad)
    img, target = ds[0]  # falls back to the next readable sample instead of raising
    assert img.mode == "RGB" and target == 0
    assert [s.path for s in ds.skipped] == ["train/air hockey/000.jpg"]
    assert "unreadable image" in ds.skipped[0].reason

    strict = Sports100(tree, "train", strict=True)
    with pytest.raises(UnreadableImageError, match="000.jpg"):
        strict[0]

    fresh = Sports100(tree, "train")
    dropped = fresh.verify()
    assert [s.path for s in dropped] == ["train/air hockey/000.jpg"] and len(fresh) == 9


def test_a_text_file_named_jpg_is_unreadable_not_a_crash(tree):
    (tree / "train/air hockey/000.jpg").write_text("this is not a jpeg")
    ds = Sports100(tree, "train")
    assert len(ds.verify()) == 1 and len(ds) == 9


def test_data_loader_workers_survive_a_bad_image(tree):
    write_truncated_jpeg(tree / "train/bike polo/000.jpg")
    ds = Sports100(tree, "train", transform=build_transforms(train=False, size=8))
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == len(ds) == 10
    assert batches[0][0].shape == (4, 3, 8, 8) and batches[0][0].dtype == torch.float32


def test_csv_path_escaping_the_root_is_refused(tmp_path):
    root = make_sports_tree(tmp_path / "s", COUNTS, csv_release=None)
    write_sports_csv(root, [[0, "train/air hockey/001.jpg", "air hockey", "train"],
                            [0, "../../etc/passwd", "air hockey", "train"]])
    with pytest.raises(ValueError, match=r"'\.\./\.\./etc/passwd' points outside the dataset root"):
        Sports100(root, "train")
    write_sports_csv(root, [[0, "/etc/passwd.jpg", "air hockey", "train"]])
    with pytest.raises(ValueError, match="must be relative"):
        Sports100(root, "train")


def test_class_in_eval_split_but_not_train_is_an_error(tmp_path):
    counts = {"train": {"archery": 1}, "valid": {"archery": 1, "boxing": 1}, "test": {"archery": 1}}
    root = make_sports_tree(tmp_path / "s", counts, csv_release=None)
    with pytest.raises(ValueError, match=r"\['boxing'\] that train does not have"):
        Sports100(root, "valid")
    write_sports_csv(root, [[0, "train/archery/001.jpg", "archery", "train"],
                            [1, "valid/boxing/001.jpg", "boxing", "valid"]], release="old")
    with pytest.raises(ValueError, match="class 'boxing', which no train row has"):
        Sports100(root, "valid")


def test_missing_root_split_and_columns_are_named(tmp_path, tree):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Sports100(tmp_path / "nowhere")
    (tree / "test").rename(tree / "tst")
    with pytest.raises(FileNotFoundError, match=r"split folder .*test' is missing"):
        Sports100(tree, "test")
    (tree / "sports.csv").write_text("path,label\ntrain/air hockey/001.jpg,air hockey\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['filepaths', 'labels', 'data set'\]"):
        Sports100(tree, "train")
    with pytest.raises(ValueError, match="split='val'"):
        Sports100(tree, "val")


def test_csv_without_rows_for_the_split_is_an_error(tmp_path):
    root = make_sports_tree(tmp_path / "s", COUNTS, csv_release=None)
    write_sports_csv(root, [[0, "train/air hockey/001.jpg", "air hockey", "train"]])
    with pytest.raises(ValueError, match=r"no rows with 'data set' == 'test'; found \['train'\]"):
        Sports100(root, "test")


def test_transform_output(tree):
    ds = Sports100(tree, "valid", transform=build_transforms(train=True, size=12))
    x, y = ds[1]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y == 1
