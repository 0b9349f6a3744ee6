"""Shared by the CLIP scripts: which dataset, its splits with the model's preprocessing, and image
features encoded once (cached on disk, keyed by model, weights, files and transform)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sportsnet.data import LogicalRhythm, Sports100, make_synthetic_sports
from sportsnet.data.cache import files_fingerprint
from sportsnet.engine.features import FeatureCache, extract_features

log = logging.getLogger("clip_data")
DEFAULT_SPORTS = "data/sports100"
SYNTHETIC_CLIP = "data/synthetic_clip"  # apart from the VGG demo's set, whose parameters differ
SYNTHETIC_DEFAULTS = dict(num_classes=10, train_per_class=60, eval_per_class=10, size=96)


def resolve_data(data: str) -> tuple[str, Path]:
    """``(kind, root)``: kind is sports100, logical_rhythm or synthetic. Empty ``data``: 100-Sports at
    its default place if present, else the synthetic set (said in one line)."""
    if not data:
        if (Path(DEFAULT_SPORTS) / "train").is_dir():
            data = DEFAULT_SPORTS
        else:
            print(f"no dataset at {DEFAULT_SPORTS} (pass --data PATH): using the synthetic sports set", flush=True)
            data = "synthetic"
    if data == "synthetic":
        return "synthetic", Path(SYNTHETIC_CLIP)
    root = Path(data)
    if not root.is_dir():
        raise SystemExit(f"error: --data {data} is not a folder (expected 100-Sports, Logical Rhythm, or 'synthetic')")
    if (root / "train_labels.csv").is_file():
        return "logical_rhythm", root
    return "sports100", root


def open_split(kind: str, root: Path, split: str, transform, synthetic: dict | None = None):
    """A labelled split of the dataset. Logical Rhythm has labels only for ``train``. ``synthetic``
    overrides :data:`SYNTHETIC_DEFAULTS` (so every CLIP script sees the same set unless told otherwise)."""
    if kind == "synthetic":
        make_synthetic_sports(root, **{**SYNTHETIC_DEFAULTS, **(synthetic or {})})
    if kind == "logical_rhythm":
        if split != "train":
            raise SystemExit(f"error: Logical Rhythm has labels only for --split train (got {split!r})")
        ds = LogicalRhythm(root, "train", transform=transform)
    else:
        ds = Sports100(root, split, transform=transform)
    ds.verify()
    return ds


def encode_split(bundle, ds, *, device, precision: str, batch_size: int, workers: int, cache_dir: str,
                 progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features and labels of a split, from the cache when nothing changed."""
    key = "|".join([bundle.name, bundle.pretrained, str(bundle.image_size), str(bundle.mean), str(bundle.std),
                    precision, files_fingerprint(p for p, _ in ds.samples)])
    if Path(bundle.pretrained).is_file():
        key += "|" + files_fingerprint([bundle.pretrained])

    def compute():
        loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
        return extract_features(lambda x: F.normalize(bundle.model.encode_image(x), dim=-1), loader, device=device,
                                precision=precision, progress=progress, desc=desc)

    return FeatureCache(cache_dir or None).get(key, compute)
