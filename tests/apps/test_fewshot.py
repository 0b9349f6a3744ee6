"""The two protocols of the few-shot ablation: the validation-free one never looks at the validation split (its
results do not move when the validation labels do, and for the methods trained once the validation protocol only
watches the same run), the validation one does; Tip-Adapter's keys average each shot's views; CLIP-LoRA leaves the
frozen model alone, batch-norm statistics included."""
import pytest
import torch
import torch.nn.functional as F

from sportsnet.apps.fewshot import FIXED, PROTOCOLS, Shots, Task, run_methods
from tests.support.clip_tiny import needs_open_clip, register

FEATURE_METHODS = ("zero-shot", "linear-probe", "wise-ft", "clip-adapter", "tip-adapter", "tip-adapter-f", "lp++",
                   "gda", "clap")


def features(n_per_class, classes=4, dim=16, seed=0, draw=0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    noise = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(100 + draw))
    return F.normalize(centres[labels] + 0.8 * noise, dim=-1), labels


def task(val_labels=None):
    feats, labels = features(2)
    views = torch.stack([F.normalize(feats + 0.1 * torch.randn(feats.shape, generator=torch.Generator()
                                                                .manual_seed(v)), dim=-1) for v in range(3)])
    val = features(10, draw=1)
    text = F.normalize(torch.randn(16, 4, generator=torch.Generator().manual_seed(5)), dim=0)
    return Task(text, 100.0, Shots(feats, labels, views, list(range(len(labels)))),
                (val[0], val[1] if val_labels is None else val_labels), features(25, draw=2), steps=30, seed=0,
                shots_per_class=2)


def test_validation_free_results_do_not_depend_on_the_validation_split():
    base = task()
    scrambled = task(val_labels=base.val[1].roll(7))
    a = run_methods(FEATURE_METHODS, base, PROTOCOLS)
    b = run_methods(FEATURE_METHODS, scrambled, PROTOCOLS)
    moved = []
    for method in FEATURE_METHODS:
        free_a, free_b = a[method]["validation-free"], b[method]["validation-free"]
        assert free_a["test"] == free_b["test"] and free_a["hparams"] == free_b["hparams"], method
        if method in FIXED:
            assert free_a["hparams"].items() >= FIXED[method].items(), method
        tuned_a, tuned_b = a[method]["validation"], b[method]["validation"]
        moved.append(tuned_a["hparams"] != tuned_b["hparams"] or tuned_a["test"] != tuned_b["test"])
    assert sum(moved) >= 3, moved  # the validation protocol reads the labels it is given


def test_tip_adapter_keys_are_each_shots_mean_view():
    """Views placed symmetrically around each shot average back to it; the heads train on every view."""
    t = task()
    offset = F.normalize(torch.randn(16, generator=torch.Generator().manual_seed(9)), dim=0) * 0.2
    shots = Shots(t.train.feats, t.train.labels, torch.stack([t.train.feats + offset, t.train.feats - offset]),
                  t.train.indices)
    assert torch.allclose(shots.keys(), t.train.feats, atol=1e-6)
    feats, labels = shots.all()
    assert feats.shape == (3 * 8, 16) and torch.equal(labels, t.train.labels.repeat(3))


class Images(torch.utils.data.Dataset):
    """Random images with labels; every read draws noise from torch's RNG, as an augmenting transform does."""

    def __init__(self, n_per_class, classes=2, seed=0, size=64):
        g = torch.Generator().manual_seed(seed)
        self.targets = torch.arange(classes).repeat_interleave(n_per_class).tolist()
        self.images = torch.randn(len(self.targets), 3, size, size, generator=g)
        self.classes = [f"class {c}" for c in range(classes)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i] + 0.1 * torch.rand(self.images[i].shape), self.targets[i]


@pytest.fixture(scope="module")
def rn_task():
    """CoOp's and CLIP-LoRA's draw on a tiny random ResNet CLIP (batch norm in its image tower)."""
    from sportsnet.engine.features import extract_features
    from sportsnet.models.clip import load_clip
    from sportsnet.models.zero_shot import build_text_classifier

    register()
    torch.manual_seed(0)
    bundle = load_clip("tiny-rn-test", "none")
    images = {"train": Images(4), "valid": Images(4, seed=1), "test": Images(4, seed=2)}
    with torch.random.fork_rng(devices=[]):
        feats = {s: extract_features(lambda x: F.normalize(bundle.model.encode_image(x), dim=-1),
                                     torch.utils.data.DataLoader(ds, batch_size=8), device=torch.device("cpu"),
                                     progress=False) for s, ds in images.items()}
    names = images["train"].classes
    text = build_text_classifier(bundle.model, bundle.tokenizer, names, ["a photo of a {}."]).float()
    shots = Shots(*feats["train"], torch.empty(0, 8, text.shape[0]), list(range(8)))
    return Task(text, 100.0, shots, feats["valid"], feats["test"], steps=10, seed=0, shots_per_class=4,
                bundle=bundle, prompt_names=names, images=images, coop_steps=6, lora_steps_per_shot=1)


@needs_open_clip
def test_clip_lora_trains_only_its_adapters_and_leaves_batch_norm_statistics_alone(rn_task):
    import copy

    from sportsnet.apps.fewshot import lora_finetune
    from sportsnet.models.lora import apply_lora

    model = copy.deepcopy(rn_task.bundle.model)
    params = apply_lora(model, rank=2)
    before = {k.replace("base.", ""): v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    assert any("running_mean" in k for k in before)
    tokens = rn_task.bundle.tokenizer(["a photo of a class 0.", "a photo of a class 1."])
    loader = torch.utils.data.DataLoader(rn_task.images["train"], batch_size=4, shuffle=True)
    lora_finetune(model, params, tokens, loader, steps=3, logit_scale=100.0, device=torch.device("cpu"),
                  precision="fp32", lr=1e-2, weight_decay=0.0)
    after = {k.replace("base.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included
    assert any(name.startswith("visual") for name, m in model.named_modules() if hasattr(m, "lora_b")) and \
        all(p.abs().sum() > 0 for name, p in model.named_parameters() if "lora_b" in name)


@needs_open_clip
@pytest.mark.parametrize("method", ["coop", "clip-lora"])
def test_one_run_methods_train_the_same_with_or_without_the_validation_protocol(rn_task, method):
    """The validation protocol watches the validation-free run (evaluating draws nothing from its random stream);
    the shared model comes back as it was (CoOp freezes it while it prompts)."""
    from sportsnet.apps.fewshot import RUNNERS

    model = rn_task.bundle.model
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    alone = RUNNERS[method](rn_task, {"validation-free"})["validation-free"]
    both = RUNNERS[method](rn_task, set(PROTOCOLS))
    assert both["validation-free"]["train_loss"] == alone["train_loss"]
    assert both["validation-free"]["test"] == alone["test"] and alone["val"] is None
    assert 0 <= both["validation"]["val"] <= 1 and both["validation"]["hparams"]["best_step"] >= 1
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_shots_augmented_views_do_not_depend_on_the_other_shots_encoded_with_it():
    from sportsnet.apps.clip_data import SeededViews

    class Draws:  # stands in for a dataset whose transform draws from torch's RNG
        def __getitem__(self, i):
            return torch.rand(4), i

    together = SeededViews(Draws(), [3, 5, 8], views=2, seed=1)
    alone = SeededViews(Draws(), [5], views=2, seed=1)
    assert len(together) == 6
    for view in range(2):
        assert torch.equal(together[view * 3 + 1][0], alone[view][0])
    assert not torch.equal(alone[0][0], alone[1][0])  # two views of one shot differ
    assert not torch.equal(SeededViews(Draws(), [5], 1, seed=2)[0][0], alone[0][0])  # and so do seeds
    state = torch.random.get_rng_state()
    together[0]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone
