"""The 100-Sports class names, exact dataset spelling, in class-id (alphabetical) order."""
from __future__ import annotations

import json
from pathlib import Path

SPORTS100_CLASSES: list[str] = json.loads((Path(__file__).with_name("sports100_classes.json")).read_text())
assert SPORTS100_CLASSES == sorted(SPORTS100_CLASSES) and len(SPORTS100_CLASSES) == 100
