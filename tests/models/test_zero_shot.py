"""sportsnet.models.zero_shot: the text classifier and the zero-shot head, against open_clip and by hand."""
import pytest
import torch
import torch.nn.functional as F

from sportsnet.models.clip import load_clip
from sportsnet.models.prompts import SPORTS
from sportsnet.models.zero_shot import ZeroShotClassifier, build_text_classifier
from tests.support import clip_tiny

pytestmark = clip_tiny.needs_open_clip
clip_tiny.register()


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return load_clip("tiny-vit-test", "none")


def test_text_classifier_equals_open_clips_and_is_cached(bundle):
    import open_clip

    names, templates = ["air hockey", "amputee football", "archery"], list(SPORTS)
    ours = build_text_classifier(bundle.model, bundle.tokenizer, names, templates, batch_size=5)
    theirs = open_clip.build_zero_shot_classifier(bundle.model, bundle.tokenizer, names, templates,
                                                  num_classes_per_batch=2)
    assert ours.shape == (32, 3)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.norm(dim=0), torch.ones(3))
    assert build_text_classifier(bundle.model, bundle.tokenizer, names, templates) is ours  # built once


def test_zero_shot_classifier_logits_are_the_hand_computation(bundle):
    W = build_text_classifier(bundle.model, bundle.tokenizer, ["a", "b", "c", "d"], ["a photo of {}."])
    clf = ZeroShotClassifier(bundle.model, W, classes=["a", "b", "c", "d"])
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = bundle.model.logit_scale.exp() * F.normalize(bundle.model.encode_image(x), dim=-1) @ W
        torch.testing.assert_close(clf(x), expected)
    assert clf.classes == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="text_classifier has 7 rows but the image features have 32"):
        ZeroShotClassifier(bundle.model, torch.randn(7, 4))
