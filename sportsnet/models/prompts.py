"""Prompt templates and class names as a text encoder should read them.

Labels keep the dataset's spelling (``ampute football``); prompts use real words (``amputee
football``). The same label can mean different sports in different datasets (100-Sports' ``football``
is American football, Logical Rhythm's is soccer), so the maps are per dataset.
"""
from __future__ import annotations

from typing import Sequence

from ..data.classnames import SPORTS100_PROMPT_NAMES

SINGLE = ("a photo of {}.",)

SPORTS = (
    "a photo of {}.",
    "a photo of a person doing {}.",
    "a photo of a person playing {}.",
    "a photo of a person practising {}.",
    "a photo of people doing {}.",
    "a photo of athletes competing in {}.",
    "a photo of a {} match.",
    "a sports photo of {}.",
)


def imagenet_templates() -> tuple[str, ...]:
    """The 80 prompt templates of CLIP's ImageNet evaluation (from open_clip's metadata)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def prompt_sets() -> dict[str, tuple[str, ...]]:
    return {"single": SINGLE, "sports": SPORTS, "imagenet": imagenet_templates()}


# Logical Rhythm 2k20 (labels with underscores; Indian usage: football = soccer, hockey = field hockey).
LOGICAL_RHYTHM_PROMPT_NAMES = {
    "football": "soccer",
    "hockey": "field hockey",
    "formula1": "formula 1 racing",
    "motogp": "MotoGP motorcycle racing",
    "wwe": "WWE professional wrestling",
    "kabaddi": "kabaddi",
}

DATASET_PROMPT_NAMES = {"sports100": SPORTS100_PROMPT_NAMES, "logical_rhythm": LOGICAL_RHYTHM_PROMPT_NAMES,
                        "synthetic": SPORTS100_PROMPT_NAMES}


def prompt_names(classes: Sequence[str], dataset: str = "sports100") -> list[str]:
    """Class names for prompts: the dataset's map, then underscores as spaces."""
    if dataset not in DATASET_PROMPT_NAMES:
        raise ValueError(f"dataset={dataset!r} is not one of {sorted(DATASET_PROMPT_NAMES)}")
    names = DATASET_PROMPT_NAMES[dataset]
    return [names.get(c, c.replace("_", " ")) for c in classes]
