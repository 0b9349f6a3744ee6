"""sportsnet.models.prompts: prompt sets and class-name cleaning."""
import pytest
import torch

from sportsnet.models.clip import load_clip
from sportsnet.models.prompts import prompt_names, prompt_sets
from sportsnet.models.zero_shot import ZeroShotClassifier
from tests.support import clip_tiny

pytestmark = clip_tiny.needs_open_clip
clip_tiny.register()


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return load_clip("tiny-vit-test", "none")


def test_prompts_use_real_words_and_labels_keep_the_dataset_spelling(bundle):
    labels = ["ampute football", "barell racing", "canoe slamon", "football", "table_tennis"]
    assert prompt_names(labels, "sports100") == ["amputee football", "barrel racing", "canoe slalom",
                                                 "American football", "table tennis"]
    assert prompt_names(["football", "ice_hockey", "wwe"], "logical_rhythm") == ["soccer", "ice hockey",
                                                                                 "WWE professional wrestling"]
    clf = ZeroShotClassifier.from_names(bundle, prompt_names(labels[:3]), ["a photo of {}."], labels=labels[:3])
    assert clf.classes == labels[:3]
    assert {k: len(v) for k, v in prompt_sets().items()} == {"single": 1, "sports": 8, "imagenet": 80}
