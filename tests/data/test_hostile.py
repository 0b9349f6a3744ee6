"""Hostile files and trees for the image readers in ``sportsnet.data``.

Every case must be decoded correctly, or skipped with a reason recorded in ``dataset.skipped`` (and
raise :class:`UnreadableImageError` under ``strict=True``), and nothing may kill a data-loader
worker mid-epoch. Cases already covered elsewhere are not repeated here: truncated JPEG through the
dataset / strict / verify, a text file named ``.jpg``, solid grayscale / CMYK / opaque RGBA / mid-grey
16-bit, ``../`` and absolute CSV paths, and one bad image under a 2-worker DataLoader are in
``tests/data/test_sports100.py`` and ``tests/data/test_logical_rhythm.py``.
"""
from __future__ import annotations

import io
import os
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sportsnet.data import (
    Captions,
    Sports100,
    UnreadableImageError,
    build_transforms,
    denormalize,
    load_rgb,
)
from tests.support.trees import ASCII, ORIENTATION, PALETTE, make_sports_tree, write_image, png16, write_black_png, write_empty, random_png_bytes, write_truncated_png, exif_block, orientation_entry, quadrants, quadrant_centres, sample_index, over_white

A, B, C = "air hockey", "bike polo", "canoe slamon"
COUNTS = {"train": {A: 3, B: 3}}


@pytest.fixture
def tree(tmp_path):
    return make_sports_tree(tmp_path / "sports", COUNTS, csv_release=None)


# ----------------------------------------------------------------------------- undecodable files

# (writer, file name, expected start of the reason, text the reason must contain)
UNREADABLE = {
    "zero-byte .jpg": (write_empty, "000.jpg", "UnidentifiedImageError:", "cannot identify image file"),
    "zero-byte .png": (write_empty, "000.png", "UnidentifiedImageError:", "cannot identify image file"),
    "PNG truncated in the pixel data": (write_truncated_png, "000.png", "OSError:", "truncated"),
    "PNG truncated inside IHDR": (lambda p: write_truncated_png(p, 20), "000.png", "OSError:", "Truncated"),
    "20000x20000 decompression bomb": (
        lambda p: write_black_png(p, 20000, 20000), "000.png", "DecompressionBombError:", "400000000 pixels"),
    "10000x10000 bomb (PIL only warns)": (
        lambda p: write_black_png(p, 10000, 10000), "000.png", "decompression bomb:", "100000000 pixels"),
}


def test_bomb_writer_makes_valid_pngs_of_the_stated_size(tmp_path, monkeypatch):
    """Premise of the bomb cases: the files are real images (they would decode without the limit)."""
    small = load_rgb(write_black_png(tmp_path / "small.png", 1001, 2003))
    assert small.size == (1001, 2003) and np.asarray(small).max() == 0
    bomb = write_black_png(tmp_path / "bomb.png", 20000, 20000)
    assert bomb.stat().st_size < 200_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(bomb) as im:  # header only; nothing is decoded
        assert im.size == (20000, 20000) and im.mode == "1"


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_file_is_skipped_with_its_reason_or_raises_under_strict(tree, case):
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10000 * 10000 <= 2 * Image.MAX_IMAGE_PIXELS
    writer, name, kind, detail = UNREADABLE[case]
    rel = f"train/{A}/{name}"  # sorts before 001.jpg: sample 0 of its class
    bad = writer(tree / rel)

    with pytest.raises(UnreadableImageError) as ei:
        load_rgb(bad)
    assert ei.value.path == str(bad)
    assert ei.value.reason.startswith(kind) and detail in ei.value.reason

    ds = Sports100(tree, "train")
    assert len(ds) == 7 and ds.skipped == []  # indexing does not decode
    i = sample_index(ds, rel)
    img, target = ds[i]  # documented fallback: the next decodable sample, train/air hockey/001.jpg
    assert target == ds.class_to_idx[A] and ds.samples[i + 1][0].endswith(f"{A}/001.jpg")
    assert np.asarray(img)[4, 4].astype(int) == pytest.approx(PALETTE[0], abs=4)
    assert [s.path for s in ds.skipped] == [rel]
    assert ds.skipped[0].reason.startswith(f"unreadable image: {kind}")
    ds[i]  # a second access neither re-decodes nor records it twice
    assert len(ds.skipped) == 1

    strict = Sports100(tree, "train", strict=True)
    with pytest.raises(UnreadableImageError, match=name):
        strict[i]

    fresh = Sports100(tree, "train")
    dropped = fresh.verify()
    assert [s.path for s in dropped] == [rel] and dropped[0].reason.startswith(f"unreadable image: {kind}")
    assert len(fresh) == 6 and str(bad) not in [p for p, _ in fresh.samples]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_every_truncation_is_refused_or_decodes_to_the_same_pixels(tmp_path, fmt):
    """Cut points across the whole file (headers, pixel data, trailer): never a partial image."""
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, fmt, quality=90)
    data = buf.getvalue()
    path = tmp_path / ("cut.png" if fmt == "PNG" else "cut.jpg")
    path.write_bytes(data)
    full = np.asarray(load_rgb(path))
    cuts = sorted(set(range(0, len(data), 13)) | set(range(len(data) - 24, len(data))))
    refused = 0
    for n in cuts:
        path.write_bytes(data[:n])
        try:
            got = np.asarray(load_rgb(path))
        except UnreadableImageError:
            refused += 1
            continue
        assert got.shape == full.shape and np.array_equal(got, full), f"{fmt} cut to {n}/{len(data)} bytes"
    assert refused >= len(range(0, len(data) - 24, 13))  # everything short of the trailer is refused


# ----------------------------------------------------------------------------- modes


@pytest.mark.parametrize("case", ["P", "P+tRNS index", "P+tRNS alpha table", "RGBA", "LA"])
def test_palette_and_alpha_pngs_decode_to_rgb_over_white(tmp_path, case):
    colours = [PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[4]]
    alphas = [255, 0, 128, 255]
    path = tmp_path / "img.png"
    if case.startswith("P"):
        img = Image.new("P", (4, 1))
        img.putpalette([v for c in colours for v in c])
        img.putdata([0, 1, 2, 3])
        kw = {"P": {}, "P+tRNS index": {"transparency": 1}, "P+tRNS alpha table": {"transparency": bytes(alphas)}}
        img.save(path, **kw[case])
        alphas = {"P": [255] * 4, "P+tRNS index": [255, 0, 255, 255], "P+tRNS alpha table": alphas}[case]
    elif case == "RGBA":
        Image.fromarray(np.array([[(*c, a) for c, a in zip(colours, alphas)]], np.uint8), "RGBA").save(path)
    else:
        colours = [(g, g, g) for g in (30, 200, 90, 140)]
        Image.fromarray(np.array([[(c[0], a) for c, a in zip(colours, alphas)]], np.uint8), "LA").save(path)
    with Image.open(path) as raw:  # premise: PIL opens the file in the mode under test
        assert raw.mode == case.split("+")[0]
        assert ("transparency" in raw.info) == ("tRNS" in case)
    got = load_rgb(path)
    assert got.mode == "RGB" and got.size == (4, 1)
    np.testing.assert_allclose(np.asarray(got)[0], over_white(colours, alphas), atol=1.01)


def test_16_bit_pngs_scale_the_full_range_to_8_bits(tmp_path):
    """Grey 16-bit (PIL mode I;16) and 48-bit RGB written without PIL: 65535 -> 255, and small
    16-bit values stay dark (not mistaken for 8-bit data). Mid-grey I;16 is in test_sports100."""
    grey = np.array([[0, 1, 255, 256, 4096, 32896, 65280, 65535]], np.uint16)
    (tmp_path / "g16.png").write_bytes(png16(grey))
    (tmp_path / "dark16.png").write_bytes(png16(grey[:, :3]))  # max 255: still 16-bit data
    rgb = np.array([[[65535, 0, 32896], [256, 4096, 61680]]], np.uint16)
    (tmp_path / "rgb48.png").write_bytes(png16(rgb))
    with Image.open(tmp_path / "g16.png") as raw:
        assert raw.mode.startswith("I")
    for name, src in [("g16.png", grey), ("dark16.png", grey[:, :3]), ("rgb48.png", rgb)]:
        got = np.asarray(load_rgb(tmp_path / name)).astype(int)
        want = np.broadcast_to((src.astype(float) / 257.0)[..., None] if src.ndim == 2 else src / 257.0, got.shape)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1.01, err_msg=name)


@pytest.mark.parametrize("size,fmt", [((1, 1), "png"), ((1, 1), "jpg"), ((1, 300), "png"), ((300, 1), "png")])
def test_tiny_and_one_pixel_wide_images_go_through_train_and_eval_transforms(tmp_path, size, fmt):
    colour = PALETTE[4]
    root = tmp_path / "s"
    write_image(root / f"train/{A}/img.{fmt}", colour, size=size)
    torch.manual_seed(0)
    for train in (False, True):
        ds = Sports100(root, "train", transform=build_transforms(train, 64))
        for _ in range(3 if train else 1):  # a few random crops
            x, y = ds[0]
            assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y == 0
            rgb = denormalize(x[None])[0]  # a solid image stays solid under any crop/resize
            want = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255
            tol = 0.03 if fmt == "png" else 0.06  # 1x1 JPEG: chroma round-off
            assert torch.allclose(rgb, want.expand_as(rgb), atol=tol), (train, rgb.mean((1, 2)))
    assert ds.skipped == []


# ----------------------------------------------------------------------------- EXIF


# Orientation -> how the stored pixels must be turned to display (EXIF 2.3, tag 0x0112), in numpy terms.
EXIF_ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
    9: lambda a: a,  # not a valid orientation: ignored
}


@pytest.mark.parametrize("orientation", list(EXIF_ORIENT))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = quadrants(48, 32)
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif_block([orientation_entry(orientation)]))
    with Image.open(path) as raw:  # premise: the file carries the tag and stores 48x32 pixels
        assert raw.size == (48, 32) and raw.getexif().get(ORIENTATION) == orientation
    got = np.asarray(load_rgb(path))
    want = EXIF_ORIENT[orientation](stored)
    assert got.shape == want.shape  # 5-8: width and height swapped
    np.testing.assert_allclose(quadrant_centres(got), quadrant_centres(want), atol=8)


@pytest.mark.parametrize("tag", [0x0155, 0x011A], ids=["SMaxSampleValue-as-ASCII", "XResolution-as-ASCII"])
def test_malformed_exif_next_to_a_rotation_does_not_crash_the_dataset(tree, tag):
    rel = f"train/{A}/000.jpg"
    Image.fromarray(quadrants(40, 20)).save(
        tree / rel, quality=95, exif=exif_block([orientation_entry(6), (tag, ASCII, 4, b"abc\x00")]))
    ds = Sports100(tree, "train")
    items = [ds[i] for i in range(len(ds))]  # strict=False: documented never to raise
    assert len(items) == 7
    img = items[sample_index(ds, rel)][0]
    # Either decoded (rotated to 20x40) or skipped and replaced by the next sample (20x16).
    assert img.size == (20, 40) or [s.path for s in ds.skipped] == [rel]
    assert len(Sports100(tree, "train").verify()) <= 1


# ----------------------------------------------------------------------------- symlinks and paths


@pytest.mark.skipif(not hasattr(os, "symlink") or not hasattr(os, "mkfifo"), reason="needs POSIX links and FIFOs")
def test_links_back_up_the_tree_and_fifos_in_a_class_folder_are_not_followed(tree):
    cls = tree / "train" / A
    os.symlink("..", cls / "loop")  # -> train/
    os.symlink("../..", cls / "up.jpg")  # -> the dataset root, named like an image
    os.mkfifo(cls / "pipe.jpg")  # opening it to decode would block forever
    t = time.monotonic()
    ds = Sports100(tree, "train")
    assert time.monotonic() - t < 5
    assert len(ds) == 6 and all(Path(p).is_file() for p, _ in ds.samples)
    assert sorted((s.path, s.reason) for s in ds.skipped) == [
        (f"train/{A}/loop", "not a regular file"),
        (f"train/{A}/pipe.jpg", "not a regular file"),
        (f"train/{A}/up.jpg", "not a regular file"),
    ]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_a_class_folder_linking_back_to_its_split_terminates_and_adds_no_images(tree):
    os.symlink(".", tree / "train" / "zz loop")  # train/zz loop -> train/
    ds = Sports100(tree, "train")
    assert sorted(ds.relpath(p) for p, _ in ds.samples) == sorted(
        f"train/{c}/{i:03d}.jpg" for c in (A, B) for i in (1, 2, 3))
    assert {(s.path, s.reason) for s in ds.skipped} == {
        (f"train/zz loop/{n}", "not a regular file") for n in (A, B, "zz loop")}
    # NB: "zz loop" still becomes an (empty) class: ds.classes == [A, B, "zz loop"]; see the report.


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
@pytest.mark.parametrize("where", ["file", "mutual files", "class folder"])
def test_self_referencing_links_are_skipped_not_fatal(tree, where):
    if where == "file":
        os.symlink("self.jpg", tree / "train" / A / "self.jpg")
        bad = [f"train/{A}/self.jpg"]
    elif where == "mutual files":
        os.symlink("b.jpg", tree / "train" / A / "a.jpg")
        os.symlink("a.jpg", tree / "train" / A / "b.jpg")
        bad = [f"train/{A}/a.jpg", f"train/{A}/b.jpg"]
    else:
        os.symlink("selfloop", tree / "train" / "selfloop")
        bad = ["train/selfloop"]
    ds = Sports100(tree, "train")
    assert len(ds) == 6 and ds.classes == [A, B]
    assert sorted(s.path for s in ds.skipped) == bad
    assert {s.reason for s in ds.skipped} <= {"not a regular file", "not a class folder"}


@pytest.mark.parametrize("row", [
    "train/../../outside.jpg",
    f"train/{A}/../../../outside.jpg",
    "./../outside.jpg",
    "..\\outside.jpg",
    " ../outside.jpg",
])
def test_csv_spellings_of_a_path_outside_the_root_are_refused(tmp_path, row):
    """Beyond the plain '../../etc/passwd' and '/etc/passwd.jpg' of test_sports100."""
    root = make_sports_tree(tmp_path / "sports", COUNTS, csv_release=None)
    write_image(tmp_path / "outside.jpg")  # exists, so accepting the row would load it
    (root / "sports.csv").write_text(
        f"class id,filepaths,labels,data set\n0,train/{A}/001.jpg,{A},train\n0,\"{row}\",{A},train\n")
    with pytest.raises(ValueError, match="points outside the dataset root"):
        Sports100(root, "train")


@pytest.mark.parametrize("name", ["../outside.jpg", "/tmp/outside.jpg"])
def test_caption_list_naming_a_file_outside_the_image_folder_is_refused(tmp_path, name):
    root = tmp_path / "kaggle"
    write_image(root / "Images" / "ok.jpg")
    write_image(root / "outside.jpg")
    (root / "captions.txt").write_text(f"image,caption\nok.jpg,a dog\n{name},escaped\n")
    with pytest.raises(ValueError, match="outside the dataset root|must be relative"):
        Captions(root, "all")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_split_folder_outside_the_root_keeps_working(tmp_path):
    """resolve_under documents a *lexical* check so that symlinked split folders keep working."""
    elsewhere = make_sports_tree(tmp_path / "disk2", COUNTS, csv_release=None)
    root = tmp_path / "sports"
    root.mkdir()
    os.symlink(elsewhere / "train", root / "train")
    for source in ("folders", "csv"):
        if source == "csv":
            rows = "".join(f"{i},train/{c}/{n:03d}.jpg,{c},train\n" for i, c in enumerate((A, B)) for n in (1, 2, 3))
            (root / "sports.csv").write_text("class id,filepaths,labels,data set\n" + rows)
        ds = Sports100(root, "train", source=source)
        assert len(ds) == 6 and ds.skipped == [] and ds.classes == [A, B]
        img, y = ds[0]
        assert np.asarray(img)[3, 3].astype(int) == pytest.approx(PALETTE[y], abs=4)


# ----------------------------------------------------------------------------- data loader


def test_loader_with_two_workers_completes_an_epoch_over_several_bad_files(tmp_path):
    root = make_sports_tree(tmp_path / "sports", {"train": {A: 3, B: 3, C: 3}}, csv_release=None)
    bad = {
        f"train/{A}/000.png": write_empty,  # first sample
        f"train/{B}/002b.jpg": lambda p: p.write_text("<html>404 not found</html>"),
        f"train/{B}/004.png": write_truncated_png,  # two bad in a row: 002b.jpg ... 003.jpg, 004.png
        f"train/{C}/000.png": lambda p: write_black_png(p, 20000, 20000),
        f"train/{C}/004.png": write_truncated_png,  # last sample: falls back around to 000.png (bad) -> A/001
    }
    for rel, writer in bad.items():
        writer(root / rel)
    ds = Sports100(root, "train", transform=build_transforms(False, 8))
    rels = [ds.relpath(p) for p, _ in ds.samples]
    assert len(ds) == 14 and set(bad) <= set(rels)
    # Documented substitution: an unreadable sample is replaced by the next decodable one (cyclically).
    expected = []
    for i in range(len(rels)):
        j = next((i + k) % len(rels) for k in range(len(rels)) if rels[(i + k) % len(rels)] not in bad)
        expected.append(ds.samples[j][1])
    assert expected[-1] == ds.class_to_idx[A] and expected[0] == ds.class_to_idx[A]

    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=4, num_workers=2):
        xs.append(x)
        ys.extend(y.tolist())
    assert ys == expected  # 14 samples, in order, each labelled like its substitute
    x = torch.cat(xs)
    assert x.shape == (14, 3, 8, 8) and torch.isfinite(x).all()
    colours = denormalize(x).mean((2, 3)) * 255
    for c, y in zip(colours, ys):  # the image and the label come from the same substitute file
        assert c.tolist() == pytest.approx(PALETTE[y], abs=4)

    strict = Sports100(root, "train", transform=build_transforms(False, 8), strict=True)
    kind, message = first_error(DataLoader(strict, batch_size=4, num_workers=2))
    # torch re-raises a worker error it cannot rebuild from one message as RuntimeError; the text keeps
    # the original type and names the file.
    assert kind in (UnreadableImageError, RuntimeError), kind
    assert "UnreadableImageError" in message and f"{A}/000.png" in message


def first_error(loader) -> tuple[type | None, str]:
    """Iterate ``loader`` and return the type and text of the error it raises. Nothing keeps the
    traceback (and with it the iterator and its worker processes) alive after the call."""
    try:
        for _ in loader:
            pass
    except Exception as e:  # noqa: BLE001 - returned for the caller to assert on
        return type(e), str(e)
    return None, ""


# ----------------------------------------------------------------------------- threads (verify)


def _feed_fifo(path: Path, data: bytes, timeout=5.0) -> None:
    """Write ``data`` to a FIFO whose reader is (or will soon be) blocked opening it."""
    end = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > end:
                return
            time.sleep(0.002)
    try:
        os.set_blocking(fd, True)
        os.write(fd, data)
    finally:
        os.close(fd)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_concurrent_decodes_as_in_verify_keep_the_decompression_bomb_limit(tmp_path, monkeypatch):
    # Interleave two load_rgb calls deterministically: each blocks reading a FIFO inside load_rgb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 = 1600 px: PIL only warns (< 2000)

    def png(side):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), PALETTE[0]).save(buf, "PNG")
        return buf.getvalue()

    first, second = tmp_path / "first.png", tmp_path / "second.png"
    os.mkfifo(first)
    os.mkfifo(second)
    results = {}

    def worker(path):
        try:
            results[path.name] = load_rgb(path).size
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results[path.name] = e

    before = warnings.filters
    threads = [threading.Thread(target=worker, args=(p,), daemon=True) for p in (first, second)]
    try:
        for t in threads:  # both block inside load_rgb, reading their FIFO
            t.start()
        time.sleep(0.2)
        _feed_fifo(first, png(20))  # a small image: first returns and leaves catch_warnings
        threads[0].join(5)
        _feed_fifo(second, png(40))  # in the warning range: must be refused
        threads[1].join(5)
    finally:
        for p in (first, second):
            if any(t.is_alive() for t in threads):
                _feed_fifo(p, b"", timeout=0.2)
    assert results["first.png"] == (20, 20)
    assert isinstance(results["second.png"], UnreadableImageError), results["second.png"]
    assert "decompression bomb" in results["second.png"].reason
    assert warnings.filters == before  # load_rgb changes no process-wide state
