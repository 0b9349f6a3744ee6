"""CoOp on a tiny open_clip CLIP: initialised from "a photo of a" it is that hand prompt's zero-shot classifier
(and stays so at learning rate 0); trained, only its context moves and the loss falls."""
import pytest
import torch
import torch.nn.functional as F

from tests.support.clip_tiny import needs_open_clip, register

pytestmark = needs_open_clip
NAMES = ["air hockey", "archery", "baseball", "surfing"]


@pytest.fixture(scope="module")
def bundle():
    from sportsnet.models.clip import load_clip

    register()
    torch.manual_seed(0)
    return load_clip("tiny-vit-test", "none")


def image_features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("class_specific", [False, True], ids=["unified", "class-specific"])
def test_initialised_from_words_it_is_the_hand_prompt_s_zero_shot_even_after_steps_at_lr_zero(bundle,
                                                                                             class_specific):
    from sportsnet.models.coop import CoOp
    from sportsnet.models.zero_shot import build_text_classifier

    coop = CoOp(bundle.model, bundle.tokenizer, NAMES, init="a photo of a", class_specific=class_specific)
    hand = build_text_classifier(bundle.model, bundle.tokenizer, NAMES, ["a photo of a {}."])  # (D, C)
    assert coop.n_ctx == 4 and coop.ctx.shape == ((4, 4, 64) if class_specific else (4, 64))
    assert torch.allclose(coop.text_features(), hand.T, atol=1e-6)
    feats = image_features(8, hand.shape[0])
    scale = bundle.model.logit_scale.exp().item()
    optimizer = torch.optim.AdamW([coop.ctx], lr=0.0, weight_decay=0.0)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(coop(feats), torch.arange(8) % 4).backward()
        optimizer.step()
    assert torch.allclose(coop(feats), scale * feats @ hand, atol=1e-4)


def test_training_moves_only_the_context_and_lowers_the_loss(bundle):
    from sportsnet.models.coop import CoOp

    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    coop = CoOp(bundle.model, bundle.tokenizer, NAMES, init=None, n_ctx=3, generator=torch.Generator().manual_seed(0))
    assert coop.ctx.shape == (3, 64) and [n for n, p in coop.named_parameters() if p.requires_grad] == ["ctx"]
    feats, labels = image_features(32, 32, seed=1), torch.arange(32) % 4
    optimizer = torch.optim.AdamW([coop.ctx], lr=5e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.cross_entropy(coop(feats), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


def test_bad_input_is_named(bundle):
    from sportsnet.models.coop import CoOp

    with pytest.raises(ValueError, match="classnames is empty"):
        CoOp(bundle.model, bundle.tokenizer, [])
    with pytest.raises(ValueError, match="longer than the text encoder's 16 tokens"):
        CoOp(bundle.model, bundle.tokenizer, ["a very long name " * 4])
    with pytest.raises(ValueError, match="n_ctx=0 must be >= 1"):
        CoOp(bundle.model, bundle.tokenizer, NAMES, init=None, n_ctx=0)
    with pytest.raises(TypeError, match="needs open_clip's CLIP text tower"):
        CoOp(torch.nn.Linear(2, 2), bundle.tokenizer, NAMES)
