"""Shared by the CLIP applications: which dataset, its splits with the model's preprocessing, and image
features encoded once (cached on disk, keyed by model, weights, files and transform)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data import SYNTHETIC_SETS, LogicalRhythm, Sports100, make_synthetic_sports
from ..data.cache import files_fingerprint
from ..engine.features import FeatureCache, extract_features
from ..hardware import resolve_precision
from ..models.clip import load_clip
from ..models.download import WeightsUnavailable
from ..serialization import WeightsFileError
from .config import device_from_flag, option, precision_option, refuse_inapplicable

log = logging.getLogger("clip_data")
DEFAULT_SPORTS = "data/sports100"
# The CLIP programs' synthetic set (apart from the VGG demo's, whose parameters differ): its folder, and the
# arguments make_synthetic_sports takes.
SYNTHETIC_CLIP = SYNTHETIC_SETS["clip-demo"]["root"]
SYNTHETIC_DEFAULTS = {k: v for k, v in SYNTHETIC_SETS["clip-demo"].items() if k != "root"}


@dataclass
class ClipRunConfig:
    """The options zero_shot_clip.py and finetune_clip.py share (each adds its own)."""

    data: str = option("", "100-Sports or Logical Rhythm folder, or 'synthetic'; empty: data/sports100 if present")
    model: str = option("ViT-B-32", "open_clip architecture")
    pretrained: str = option("openai", "pretrained tag, a local checkpoint file, or 'none' (random weights)")
    prompts: str = option("sports", "prompt set of the zero-shot head", ("single", "sports", "imagenet"))
    precision: str = precision_option()
    batch_size: int = option(64, "images per batch", bounds=">=1")
    workers: int = option(2, "data-loader workers", bounds=">=0")
    device: str = option("auto", "cpu, cuda, cuda:N or auto")
    out: str = option("runs", "folder for run folders")
    name: str = option("", "run folder name (default: from the script, model, weights, data and time)")
    cache_dir: str = option("data/cache/features", "image-feature cache ('' to disable)")
    progress: bool = option(True, "progress bars")
    synthetic_classes: int = option(SYNTHETIC_DEFAULTS["num_classes"], "synthetic set: number of classes",
                                    bounds="[2,100]", applies=("data", ("synthetic",)))
    synthetic_size: int = option(SYNTHETIC_DEFAULTS["size"], "synthetic set: image side in pixels",
                                 bounds=">=32", applies=("data", ("synthetic",)))


def load_clip_or_exit(model: str, pretrained: str, device, *, unavailable_ok: bool = False):
    """``load_clip`` with the same random weights every run for ``none``; errors as one-line exits
    (but :class:`WeightsUnavailable` is raised with ``unavailable_ok``: the caller has a way out)."""
    torch.manual_seed(0)
    try:
        return load_clip(model, pretrained, device=device)
    except (FileNotFoundError, ValueError, WeightsFileError) as e:
        if unavailable_ok and isinstance(e, WeightsUnavailable):
            raise
        raise SystemExit(f"error: {e}") from None


def start(cfg: ClipRunConfig, given: set[str], *, offline_demo_ok: bool = False):
    """What the CLIP scripts do first: ``(kind, root, device, precision, bundle)``; a flag in ``given`` that
    has no effect on this data is refused first (:func:`~sportsnet.apps.config.refuse_inapplicable`). With
    ``offline_demo_ok``, weights that cannot be had for the synthetic set raise :class:`WeightsUnavailable`
    (zero_shot_clip.py then runs its offline demo and says why in one line); every other error is a
    one-line exit."""
    kind, root, fallback = resolve_data(cfg.data)
    refuse_inapplicable(dataclasses.replace(cfg, data="synthetic" if kind == "synthetic" else str(root)), given)
    device = device_from_flag(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    bundle = load_clip_or_exit(cfg.model, cfg.pretrained, device,
                               unavailable_ok=offline_demo_ok and kind == "synthetic")
    if fallback:
        print(fallback, flush=True)
    return kind, root, device, precision, bundle


def resolve_data(data: str) -> tuple[str, Path, str]:
    """``(kind, root, note)``: kind is sports100, logical_rhythm or synthetic. Empty ``data``: 100-Sports
    at its default place if present, else the synthetic set, which ``note`` says (else it is empty)."""
    note = ""
    if not data:
        if (Path(DEFAULT_SPORTS) / "train").is_dir():
            data = DEFAULT_SPORTS
        else:
            note = f"no dataset at {DEFAULT_SPORTS} (pass --data PATH): using the synthetic sports set"
            data = "synthetic"
    if data == "synthetic":
        return "synthetic", Path(SYNTHETIC_CLIP), note
    root = Path(data)
    if not root.is_dir():
        raise SystemExit(f"error: --data {data} is not a folder (expected 100-Sports, Logical Rhythm, or 'synthetic')")
    if (root / "train_labels.csv").is_file():
        return "logical_rhythm", root, note
    return "sports100", root, note


def open_split(kind: str, root: Path, split: str, transform, synthetic: dict | None = None):
    """A labelled split of the dataset. Logical Rhythm has labels only for ``train``; a 100-Sports-layout
    folder has train, valid and test, and a synthetic set also :data:`~sportsnet.data.OFFCENTRE_SPLIT`
    (a split the folder lacks is a one-line exit naming the splits it has). ``synthetic`` overrides
    :data:`SYNTHETIC_DEFAULTS` (so every CLIP script sees the same set unless told otherwise)."""
    if kind == "synthetic":
        make_synthetic_sports(root, **{**SYNTHETIC_DEFAULTS, **(synthetic or {})})
    if kind == "logical_rhythm":
        if split != "train":
            raise SystemExit(f"error: Logical Rhythm has labels only for --split train (got {split!r})")
        ds = LogicalRhythm(root, "train", transform=transform)
    else:
        try:
            ds = Sports100(root, split, transform=transform)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
    ds.verify()
    return ds


def _cache_key(bundle, ds, precision: str) -> str:
    key = "|".join([bundle.name, bundle.pretrained, str(bundle.image_size), str(bundle.mean), str(bundle.std),
                    precision, files_fingerprint(p for p, _ in ds.samples)])
    if Path(bundle.pretrained).is_file():
        key += "|" + files_fingerprint([bundle.pretrained])
    return key


def _encode(bundle, ds, *, device, precision, batch_size, workers, progress, desc):
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    return extract_features(lambda x: F.normalize(bundle.model.encode_image(x), dim=-1), loader, device=device,
                            precision=precision, progress=progress, desc=desc)


def encode_split(bundle, ds, *, device, precision: str, batch_size: int, workers: int, cache_dir: str,
                 progress: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image features and labels of a split, from the cache when nothing changed."""
    return FeatureCache(cache_dir or None).get(
        _cache_key(bundle, ds, precision),
        lambda: _encode(bundle, ds, device=device, precision=precision, batch_size=batch_size, workers=workers,
                        progress=progress, desc=desc))


class SeededViews(Dataset):
    """``views`` augmented copies of the samples ``indices`` of ``ds`` (whose transform augments), view-major. Each
    (view, sample) is drawn from its own seed, made of ``seed``, the view and the sample's index in ``ds``, so a
    sample's views do not depend on which other samples are encoded with it, or on the data-loader workers."""

    def __init__(self, ds, indices: list[int], views: int, seed: int = 0):
        self.ds, self.indices, self.views, self.seed = ds, list(indices), views, seed

    def __len__(self) -> int:
        return self.views * len(self.indices)

    def __getitem__(self, i: int):
        view, index = divmod(i, len(self.indices))
        sample = self.indices[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + view * 10_000_019 + sample)
            return self.ds[sample]


def encode_views(bundle, ds, indices: list[int], views: int, *, seed: int = 0, device, precision: str,
                 batch_size: int, workers: int, cache_dir: str, progress: bool) -> torch.Tensor:
    """``(views, len(indices), D)`` unit-norm features of augmented views of the samples ``indices`` of ``ds``
    (whose transform augments: ``bundle.transforms(True, ...)``; :class:`SeededViews`); cached like
    :func:`encode_split`, keyed also by the indices, the number of views, the seed and the transform."""
    key = "|".join([_cache_key(bundle, ds, precision), "seeded-views", str(views), str(seed), repr(ds.transform),
                    hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()])
    feats, _ = FeatureCache(cache_dir or None).get(
        key, lambda: _encode(bundle, SeededViews(ds, indices, views, seed), device=device, precision=precision,
                             batch_size=batch_size, workers=workers, progress=progress, desc="encode augmented views"))
    return feats.reshape(views, len(indices), -1)
