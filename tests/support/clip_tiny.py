"""Tiny open_clip architectures for tests (random weights, built in milliseconds, no downloads).

The text towers keep CLIP's 49408-token vocabulary, so open_clip's own tokenizer works with them. Tests that use
open_clip carry :data:`needs_open_clip`: they skip where it is not installed (as on a lent GPU machine)."""
import functools
import json
import tempfile
from pathlib import Path

import pytest

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
CONFIGS = {
    "tiny-vit-test": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32,
                                                      "patch_size": 4}, "text_cfg": TEXT},
    "tiny-vit-test-quickgelu": {"embed_dim": 32, "quick_gelu": True, "vision_cfg": {"image_size": 32, "layers": 2,
                                "width": 64, "head_width": 32, "patch_size": 4}, "text_cfg": TEXT},
    "tiny-rn-test": {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16},
                     "text_cfg": TEXT},
}
_registered = False


@functools.cache
def open_clip_available() -> bool:
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return False
    return True


#: For a test that needs open_clip: skipped where it is not installed.
needs_open_clip = pytest.mark.skipif(not open_clip_available(), reason="open_clip is not installed")


def register() -> list[str]:
    """Add the tiny configs to open_clip's registry (once per process; nothing without open_clip, whose tests
    skip); returns their names."""
    global _registered
    if not _registered and open_clip_available():
        import open_clip

        folder = Path(tempfile.mkdtemp(prefix="sportsnet-clip-configs-"))
        for name, cfg in CONFIGS.items():
            (folder / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder)
        _registered = True
    return list(CONFIGS)
