"""The 100-Sports class names: the dataset's exact spelling, in class-id (alphabetical) order, and how a
sentence spells them (prompts, the synthetic set's captions)."""
from __future__ import annotations

import json
from pathlib import Path

SPORTS100_CLASSES: list[str] = json.loads((Path(__file__).with_name("sports100_classes.json")).read_text())
assert SPORTS100_CLASSES == sorted(SPORTS100_CLASSES) and len(SPORTS100_CLASSES) == 100

# 100-Sports: misspellings and names that read poorly in a sentence -> what a caption or prompt says.
SPORTS100_PROMPT_NAMES = {
    "ampute football": "amputee football",
    "barell racing": "barrel racing",
    "canoe slamon": "canoe slalom",
    "bmx": "BMX racing",
    "gaga": "gaga ball",
    "figure skating men": "men's figure skating",
    "figure skating pairs": "pairs figure skating",
    "figure skating women": "women's figure skating",
    "football": "American football",
    "hockey": "ice hockey",
    "mushing": "sled dog mushing",
    "nascar racing": "NASCAR racing",
    "parallel bar": "parallel bars gymnastics",
    "rings": "gymnastics rings",
    "snow boarding": "snowboarding",
    "track bicycle": "track cycling",
    "ultimate": "ultimate frisbee",
}
