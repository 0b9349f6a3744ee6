"""The synthetic sports set: the offline default that demos and tests train on.

:func:`make_synthetic_sports` writes a tree in the exact 100-Sports layout, so the real reader
(:class:`~sportsnet.data.Sports100`) is what reads it::

    ROOT/{train,valid,test}/<class name>/<nnn>.jpg
    ROOT/offcentre/<class name>/<nnn>.jpg   an evaluation split whose objects lie away from the centre
    ROOT/sports.csv                  class id,filepaths,labels,data set   (the newer Kaggle release)
    ROOT/boxes.csv                   filepaths,labels,x0,y0,x1,y1         (the deciding object, pixels)
    ROOT/captions.txt                image,caption                        (Flickr8k's Kaggle layout)
    ROOT/Flickr_8k.{trainImages,devImages,testImages}.txt                 (so Captions reads the splits)
    ROOT/synthetic.json              the generation parameters

The ``offcentre`` split (:data:`~sportsnet.data.sports100.OFFCENTRE_SPLIT`; ``eval_per_class`` images per
class, in sports.csv, boxes.csv and captions.txt but in no Flickr list, so caption training and its
valid/test never see it) places each object's box wholly on one side of the image centre
(:data:`~sportsnet.data.synthetic_scene.OFFCENTRE_GAP`): there a map that always peaks at the centre
misses, whereas the other splits' objects cluster around the centre, where such a map scores high on
the pointing game.

Class names are the real dataset's (the first ``num_classes`` in class-id order). Each class is one
object (shape x colour x pattern, see :func:`~sportsnet.data.synthetic_scene.class_objects`); the
background, distractors, lighting, position, size and rotation are drawn independently of the class.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..serialization import atomic_path
from .classnames import SPORTS100_CLASSES, SPORTS100_PROMPT_NAMES
from .sports100 import OFFCENTRE_SPLIT
from .synthetic_scene import class_objects, render_scene

# 2: captions that name the sport alone. 3: the offcentre split (a set written before lacks it, so it is
# rewritten; the train/valid/test files come out byte for byte as before: each image's generator is unchanged).
FORMAT_VERSION = 3
MANIFEST = "synthetic.json"
# Each split's id seeds its images' generators: a new split takes a new id and leaves the others' images as they were.
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2, OFFCENTRE_SPLIT: 3}
CAPTION_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "valid": "Flickr_8k.devImages.txt",
                       "test": "Flickr_8k.testImages.txt"}
GRAYSCALE_FRACTION = 0.01  # like the real set's handful of grayscale JPEGs
# Every caption names the sport (spelt as in a sentence: "amputee football", not the label "ampute
# football"); some also describe the object that shows it. Captions that name the
# sport alone make the class names carry the meaning on their own, as zero-shot prompts need (with
# the object in every caption, a text tower can learn to lean on the object words instead).
_CAPTION_TEMPLATES = (
    "a photo of {cls}: a {obj} on {bg}.",
    "{cls} with a {obj}, seen on {bg}.",
    "a {obj} on {bg} during {cls}.",
    "a game of {cls} on {bg}.",
    "{cls}, seen on {bg}.",
)
_BACKGROUND_WORDS = {
    "grass": "grass", "court": "a hard court", "ice": "ice", "water": "water", "track": "a running track",
    "sand": "sand", "clay": "a clay court", "parquet": "a wooden floor",
}


def _check_args(num_classes, train_per_class, eval_per_class, size) -> None:
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(SPORTS100_CLASSES):
        raise ValueError(f"num_classes={num_classes!r} must be an integer in [2, {len(SPORTS100_CLASSES)}]")
    for name, v in (("train_per_class", train_per_class), ("eval_per_class", eval_per_class)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"size={size!r} must be an integer >= 32 (pixels per side)")


#: The two offline sets the programs write (one home for their sizes; every program flag defaults to these):
#: ``vgg-demo`` is train_vgg19.py's demo set, ``clip-demo`` the CLIP programs' (pretrain_clip.py trains on its
#: training captions, zero_shot_clip.py and finetune_clip.py classify it). Each is reused while its
#: arguments are unchanged.
SYNTHETIC_SETS: dict[str, dict] = {
    "vgg-demo": {"root": "data/synthetic", "num_classes": 10, "train_per_class": 200, "eval_per_class": 50,
                 "size": 96},
    "clip-demo": {"root": "data/synthetic_clip", "num_classes": 10, "train_per_class": 60, "eval_per_class": 10,
                  "size": 96},
}


def synthetic_set(name: str, **overrides) -> Path:
    """Write (or reuse) the named set of :data:`SYNTHETIC_SETS`, with any argument overridden."""
    if name not in SYNTHETIC_SETS:
        raise ValueError(f"synthetic set {name!r} is not one of {sorted(SYNTHETIC_SETS)}")
    return make_synthetic_sports(**{**SYNTHETIC_SETS[name], **overrides})


def make_synthetic_sports(
    root: str | os.PathLike,
    num_classes: int = 10,
    train_per_class: int = 60,
    eval_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the synthetic set under ``root`` (deterministic for the arguments) and return ``root``.

    ``eval_per_class`` images of each class go to each of valid, test and the offcentre split.

    If ``root`` already holds a set made with the same arguments, nothing is rewritten. A set made
    with other arguments is replaced; a non-empty folder that is not a synthetic set is refused.
    The tree is written to a temporary sibling folder and moved into place when complete.
    """
    _check_args(num_classes, train_per_class, eval_per_class, size)
    root = Path(root).expanduser()
    params = {"format": FORMAT_VERSION, "num_classes": num_classes, "train_per_class": train_per_class,
              "eval_per_class": eval_per_class, "size": size, "seed": seed}
    manifest = root / MANIFEST
    if root.exists():
        if manifest.is_file():
            if json.loads(manifest.read_text()) == params:
                return root
        elif any(root.iterdir()):
            raise FileExistsError(
                f"{str(root)!r} is not empty and holds no {MANIFEST}; refusing to write the synthetic "
                f"set over it (pick an empty or new folder)"
            )
    with atomic_path(root, sync=False) as tmp:
        _write_tree(tmp, params)
    return root


def _write_tree(root: Path, p: dict) -> None:
    classes = SPORTS100_CLASSES[: p["num_classes"]]
    objects = class_objects(p["num_classes"])
    counts = {"train": p["train_per_class"], "valid": p["eval_per_class"], "test": p["eval_per_class"],
              OFFCENTRE_SPLIT: p["eval_per_class"]}
    csv_rows, box_rows, caption_rows = [], [], []
    split_lists: dict[str, list[str]] = {s: [] for s in CAPTION_SPLIT_FILES}  # not offcentre: see the docstring
    for split, n in counts.items():
        for c, (name, spec) in enumerate(zip(classes, objects)):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                # One generator per image: a split's images do not change when another split grows.
                rng = np.random.default_rng([p["seed"], SPLIT_IDS[split], c, i])
                scene = render_scene(spec, p["size"], rng, grayscale=bool(rng.random() < GRAYSCALE_FRACTION),
                                     placement="offcentre" if split == OFFCENTRE_SPLIT else "anywhere")
                rel = f"{split}/{name}/{i + 1:03d}.jpg"
                scene.image.save(root / rel, quality=90)
                csv_rows.append([c, rel, name, split])
                box_rows.append([rel, name, *scene.box])
                template = _CAPTION_TEMPLATES[rng.integers(len(_CAPTION_TEMPLATES))]
                caption = template.format(cls=SPORTS100_PROMPT_NAMES.get(name, name), obj=spec.describe(),
                                          bg=_BACKGROUND_WORDS[scene.background])
                caption_rows.append([rel, caption])
                if split in split_lists:
                    split_lists[split].append(rel)
    _write_csv(root / "sports.csv", ["class id", "filepaths", "labels", "data set"], csv_rows)
    _write_csv(root / "boxes.csv", ["filepaths", "labels", "x0", "y0", "x1", "y1"], box_rows)
    _write_csv(root / "captions.txt", ["image", "caption"], caption_rows)
    for split, names in split_lists.items():
        (root / CAPTION_SPLIT_FILES[split]).write_text("\n".join(names) + "\n")
    (root / MANIFEST).write_text(json.dumps(p, indent=2) + "\n")


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def read_boxes(root: str | os.PathLike) -> dict[str, tuple[int, int, int, int]]:
    """``boxes.csv`` -> {relative image path: (x0, y0, x1, y1)} in pixels, x1/y1 exclusive."""
    path = Path(root) / "boxes.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing; it is written by make_synthetic_sports")
    with open(path, newline="") as fh:
        return {r["filepaths"]: (int(r["x0"]), int(r["y0"]), int(r["x1"]), int(r["y1"]))
                for r in csv.DictReader(fh)}
