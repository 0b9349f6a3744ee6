import csv

import pytest
import torch

from sportsnet.data import Captions, summarize_skipped
from sportsnet.data.captions import hash_split
from tests.support.trees import write_image

CAPS = {
    "1000_a.jpg": ["A dog runs , fast .", "a brown dog", "dog on grass", "running dog", "a pet"],
    "1001_b.jpg": ["two kids play, laughing", "children", "kids outside", "play time", "fun"],
    "1002_c.jpg": ['a "quoted" caption, with commas', "c2", "c3", "c4", "c5"],
}


def write_flickr_original(root, with_text_dir=True):
    text = root / "Flickr8k_text" if with_text_dir else root
    text.mkdir(parents=True, exist_ok=True)
    lines = [f"{img}#{n}\t{c}" for img, caps in CAPS.items() for n, c in reversed(list(enumerate(caps)))]
    lines.append("2258277193_586949ec62.jpg.1#0\ta bogus key with no image")  # as in the real file
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("1000_a.jpg\n1001_b.jpg\n")
    (text / "Flickr_8k.devImages.txt").write_text("1002_c.jpg\n")
    (text / "Flickr_8k.testImages.txt").write_text("")
    for img in CAPS:
        write_image(root / "Flicker8k_Dataset" / img)
    return root


def write_flickr_kaggle(root):
    root.mkdir(parents=True)
    with open(root / "captions.txt", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows([img, c] for img, caps in CAPS.items() for c in caps)
    for img in list(CAPS)[:2]:  # the third image is missing on disk
        write_image(root / "Images" / img)
    return root


def test_original_layout_reads_tokens_in_caption_order_and_split_lists(tmp_path):
    root = write_flickr_original(tmp_path / "f8k")
    train = Captions(root, "train", caption="first")
    assert train.layout == "flickr8k" and len(train) == 2
    assert train.captions == [CAPS["1000_a.jpg"], CAPS["1001_b.jpg"]]
    img, cap = train[1]
    assert img.mode == "RGB" and cap == "two kids play, laughing"
    assert Captions(root, "dev").captions == [CAPS["1002_c.jpg"]]


def test_bogus_key_without_image_is_reported(tmp_path):
    root = write_flickr_original(tmp_path / "f8k", with_text_dir=False)
    ds = Captions(root, "all")
    assert len(ds) == 3
    assert [(s.path, s.reason) for s in ds.skipped] == [("2258277193_586949ec62.jpg.1", "image file missing")]


def test_kaggle_csv_keeps_commas_and_quotes_and_skips_missing_images(tmp_path):
    root = write_flickr_kaggle(tmp_path / "kaggle")
    ds = Captions(root, "all", caption="first")
    assert ds.layout == "kaggle" and len(ds) == 2
    assert ds.captions[0][0] == "A dog runs , fast ."
    assert summarize_skipped(ds.skipped) == {"image file missing": 1}
    (root / "Images" / "1002_c.jpg").parent.mkdir(exist_ok=True)
    write_image(root / "Images" / "1002_c.jpg")
    assert Captions(root, "all").captions[2][0] == 'a "quoted" caption, with commas'


def test_random_caption_follows_torch_seed(tmp_path):
    ds = Captions(write_flickr_kaggle(tmp_path / "k"), "all", caption="random")
    torch.manual_seed(0)
    a = [ds[0][1] for _ in range(20)]
    torch.manual_seed(0)
    assert a == [ds[0][1] for _ in range(20)]
    assert len(set(a)) > 1 and set(a) <= set(CAPS["1000_a.jpg"])


def test_without_split_lists_a_deterministic_hash_split_is_used(tmp_path):
    root = write_flickr_kaggle(tmp_path / "k")
    names = {s: [n for n in sorted(CAPS) if hash_split(n) == s] for s in ("train", "valid", "test")}
    for split, expected in names.items():
        got = [p.rsplit("/", 1)[-1] for p, _ in Captions(root, split).samples]
        assert got == [n for n in expected if n != "1002_c.jpg"]
    counts = {s: sum(hash_split(f"{i}.jpg") == s for i in range(8000)) for s in ("train", "valid", "test")}
    assert 5700 < counts["train"] < 6300 and 800 < counts["test"] < 1200


def test_bad_input_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither Flickr8k.token.txt"):
        Captions(tmp_path)
    with pytest.raises(ValueError, match="split='val'"):
        Captions(tmp_path, "val")
    (tmp_path / "captions.txt").write_text("img,text\na.jpg,hello\n")
    with pytest.raises(ValueError, match=r"columns \['img', 'text'\]; expected 'image,caption'"):
        Captions(tmp_path)
    root = tmp_path / "tok"
    root.mkdir()
    (root / "Flicker8k_Dataset").mkdir()
    (root / "Flickr8k.token.txt").write_text("no tab or hash here\n")
    with pytest.raises(ValueError, match="line 1: expected '<image>#<n>"):
        Captions(root, "all")
