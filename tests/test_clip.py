"""CLIP: loading, the zero-shot classifier, adapters, and the two scripts, on tiny random models."""
import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clip_tiny
from sportsnet.data import few_shot_indices
from sportsnet.models.adapters import ClipAdapter, LinearProbe, TipAdapter, wise_ft, zero_shot_linear
from sportsnet.models.clip import _resolve_name, load_clip
from sportsnet.models.prompts import SPORTS, prompt_names, prompt_sets
from sportsnet.models.zero_shot import ZeroShotClassifier, build_text_classifier
from trees import write_malicious_pickle

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


def test_prompts_use_real_words_and_labels_keep_the_dataset_spelling(bundle):
    labels = ["ampute football", "barell racing", "canoe slamon", "football", "table_tennis"]
    assert prompt_names(labels, "sports100") == ["amputee football", "barrel racing", "canoe slalom",
                                                 "American football", "table tennis"]
    assert prompt_names(["football", "ice_hockey", "wwe"], "logical_rhythm") == ["soccer", "ice hockey",
                                                                                 "WWE professional wrestling"]
    clf = ZeroShotClassifier.from_names(bundle, prompt_names(labels[:3]), ["a photo of {}."], labels=labels[:3])
    assert clf.classes == labels[:3]
    assert {k: len(v) for k, v in prompt_sets().items()} == {"single": 1, "sports": 8, "imagenet": 80}


def features(n=40, d=32, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % c
    centres = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    feats = F.normalize(centres[labels] + 0.3 * torch.randn(n, d, generator=g), dim=-1)
    W = F.normalize(torch.randn(d, c, generator=g), dim=0)
    return feats, labels, W


def test_clip_adapter_with_ratio_zero_is_the_zero_shot_head():
    feats, _, W = features()
    zero_shot = 20 * feats @ W
    torch.testing.assert_close(ClipAdapter(W, 20.0, ratio=0.0)(feats), zero_shot)
    assert not torch.allclose(ClipAdapter(W, 20.0, ratio=0.5)(feats), zero_shot)


def test_tip_adapter_alpha_zero_is_zero_shot_and_the_cache_matches_the_formula():
    feats, labels, W = features()
    keys, key_labels = feats[:8], labels[:8]
    torch.testing.assert_close(TipAdapter(W, 20.0, keys, key_labels, alpha=0.0)(feats), 20 * feats @ W)
    tip = TipAdapter(W, 20.0, keys, key_labels, alpha=2.0, beta=5.0)
    cache = torch.exp(-5.0 * (1 - feats @ keys.T)) @ F.one_hot(key_labels, 4).float()
    torch.testing.assert_close(tip(feats), 20 * feats @ W + 2.0 * cache)
    assert isinstance(TipAdapter(W, 20.0, keys, key_labels, learn_keys=True).keys, torch.nn.Parameter)


def test_wise_ft_interpolates_heads():
    _, _, W = features()
    zs = zero_shot_linear(W, 10.0)
    ft = LinearProbe(32, 4).linear
    torch.testing.assert_close(wise_ft(zs, ft, 0.0).weight, zs.weight)
    torch.testing.assert_close(wise_ft(zs, ft, 1.0).weight, ft.weight)
    torch.testing.assert_close(wise_ft(zs, ft, 0.25).bias, 0.75 * zs.bias + 0.25 * ft.bias)


def test_k_shot_sampler_on_feature_labels():
    labels = torch.tensor([0] * 5 + [1] * 9 + [2] * 3)
    idx = few_shot_indices(labels.tolist(), 3, seed=4)
    assert torch.bincount(labels[idx]).tolist() == [3, 3, 3]
    assert idx == few_shot_indices(labels.tolist(), 3, seed=4) != few_shot_indices(labels.tolist(), 3, seed=5)
    with pytest.raises(ValueError, match=r"k=4 .*'c' has 3"):
        few_shot_indices(labels.tolist(), 4, classes=["a", "b", "c"])


def test_local_checkpoints_load_and_mismatches_are_named(bundle, tmp_path, caplog):
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in bundle.model.state_dict().items()}}, path)
    again = load_clip("tiny-vit-test", str(path))
    # A file cannot say whether it was trained with QuickGELU; a -quickgelu variant exists, so say so.
    assert "use tiny-vit-test-quickgelu" in caplog.text
    caplog.clear()
    load_clip("tiny-vit-test-quickgelu", str(path))
    assert "QuickGELU" not in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), bundle.model.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit tiny-rn-test: .*shape mismatches|missing"):
        load_clip("tiny-rn-test", str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_clip("tiny-vit-test", str(tmp_path / "missing.pt"))


def test_offline_tags_and_bad_names_give_clear_errors(tmp_path):  # conftest sets HF_HUB_OFFLINE=1
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set\. Download https://huggingface\.co/.*"
                                                r"open_clip_pytorch_model\.bin where there is a network and pass its "
                                                r"path: --pretrained"):
        load_clip("ViT-B-32", "laion2b_s34b_b79k", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="'bogus' is neither a pretrained tag of ViT-B-32"):
        load_clip("ViT-B-32", "bogus")
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Z-99'"):
        load_clip("ViT-Z-99", "none")


def test_openai_weights_get_the_quickgelu_architecture():
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    assert _resolve_name(open_clip, "ViT-B-32", cfg) == ("ViT-B-32-quickgelu", False)
    assert _resolve_name(open_clip, "ViT-B-32", open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")) == \
        ("ViT-B-32", False)


def test_preprocessing_comes_from_the_model(bundle):
    assert bundle.image_size == 32 and bundle.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert bundle.interpolation.value == "bicubic"
    from PIL import Image

    x = bundle.transforms(False)(Image.new("RGB", (80, 50), (255, 0, 0)))
    assert x.shape == (3, 32, 32)


def script_args(tmp_path, *extra):
    return ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--out", str(tmp_path / "runs"),
            "--precision", "fp32",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "0", *extra]


def test_zero_shot_script_runs_without_weights_and_writes_its_reports(tmp_path, monkeypatch, capsys):
    import zero_shot_clip

    monkeypatch.chdir(tmp_path)  # the synthetic set is written under ./data
    result = zero_shot_clip.main(script_args(tmp_path))
    run = result["run_dir"]
    for f in ("test_report.json", "test_report.md", "test_confusion_matrix.png", "prompt_ablation.json",
              "prompt_ablation.md"):
        assert (run / f).is_file(), f
    report = json.loads((run / "test_report.json").read_text())
    assert report["prompt_names"]["ampute football"] == "amputee football"
    assert set(result["ablation"]) == {"single", "sports", "imagenet"}
    out = capsys.readouterr().out
    assert "random weights" in out and out.strip().splitlines()[-1].startswith("zero-shot top-1 accuracy: ")
    again = zero_shot_clip.main(script_args(tmp_path, "--name", "second"))  # features now from the cache
    assert again["ablation"] == result["ablation"]


def test_few_shot_ablation_runs_and_adapters_beat_random_zero_shot(tmp_path, monkeypatch):
    import finetune_clip

    monkeypatch.chdir(tmp_path)
    result = finetune_clip.main(script_args(tmp_path, "--shots", "4,16,all", "--seeds", "1,2", "--steps", "150",
                                            "--synthetic-eval-per-class", "30"))
    run, s = result["run_dir"], result["summary"]
    assert (run / "results.md").is_file() and (run / "accuracy_vs_shots.png").is_file()
    assert "| tip-adapter-f |" in (run / "results.md").read_text()
    zero = s["zero-shot"]["all"]["mean"]
    # Random weights: the zero-shot head is a random guess; heads that learn from the few-shot
    # features must do clearly better (300 test images: 0.05 is > 2.5 standard deviations).
    for method in ("linear-probe", "wise-ft", "tip-adapter-f"):
        assert s[method]["all"]["mean"] > zero + 0.05, (method, s[method], zero)
        assert s[method]["16"]["mean"] > zero + 0.03, (method, s[method], zero)
    for method in ("clip-adapter", "tip-adapter"):
        assert s[method]["all"]["mean"] >= zero - 0.03, (method, s[method], zero)
    assert {r["seed"] for r in result["rows"]} == {1, 2}


def test_few_shot_refuses_more_shots_than_the_smallest_class(tmp_path, monkeypatch):
    import finetune_clip

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--shots \[100\] exceed the smallest class"):
        finetune_clip.main(script_args(tmp_path, "--shots", "4,100"))
    with pytest.raises(SystemExit, match="--shots entry 'x'"):
        finetune_clip.main(script_args(tmp_path, "--shots", "4,x"))


@pytest.mark.parametrize("name, layer", [("tiny-vit-test", "visual.transformer.resblocks.1.ln_1"),
                                         ("tiny-rn-test", "visual.layer4")])
def test_gradcam_of_a_free_text_prompt_is_the_hand_computation(name, layer):
    from sportsnet.cam import GradCAM, default_target_layer
    from sportsnet.cam.hooks import as_maps
    from sportsnet.ops import gradcam_reference

    torch.manual_seed(0)
    b = load_clip(name, "none")
    clf = ZeroShotClassifier.from_names(b, ["a person surfing", "a person skiing"], ["{}"]).eval()
    assert default_target_layer(clf) == layer
    x = torch.randn(2, 3, b.image_size, b.image_size)
    out = GradCAM(clf)(x, targets=1)  # the second prompt, whatever the prediction
    assert out.maps.shape == (2, 1, b.image_size, b.image_size) and out.classes.eq(1).all()
    store = {}
    handle = dict(clf.named_modules())[layer].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    logits = clf(x)
    handle.remove()
    grads = torch.autograd.grad(logits[:, 1].sum(), store["a"])[0]
    expected = gradcam_reference(as_maps(store["a"].detach(), 2, layer), as_maps(grads, 2, layer), x.shape[-2:])
    torch.testing.assert_close(out.maps[:, 0], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["tiny-vit-test", "tiny-rn-test"])
def test_explain_script_on_zero_shot_clip(name, tmp_path, monkeypatch):
    import csv

    import explain
    from trees import write_image

    monkeypatch.chdir(tmp_path)  # the synthetic CLIP set is written under ./data
    common = ["--clip", name, "--pretrained", "none", "--no-progress", "--deletion-steps", "2", "--batch-size", "32",
              "--precision", "fp32"]
    report = explain.main([*common, "--data", "synthetic", "--split", "test", "--top-k", "2", "--out", "o1"])
    size = 32 if name == "tiny-vit-test" else 64
    assert report["images"] == 100 and report["boxes"] and report["model"] == f"{name} (none)"
    assert report["target_layer"] == [("visual.transformer.resblocks.1.ln_1" if "vit" in name else "visual.layer4")]
    assert 0 <= report["metrics"]["accuracy"] <= 1 and 0 <= report["metrics"]["pointing_game/gradcam"] <= 1
    rows = list(csv.DictReader(open(tmp_path / "o1" / "predictions.csv")))
    assert len(rows) == 100 and rows[0]["true"] and {"top1", "top2"} <= set(rows[0])
    with Image.open(next((tmp_path / "o1" / "overlays").rglob("*.png"))) as im:
        assert im.size == (size, size)
    for i in range(2):
        write_image(tmp_path / "photos" / f"{i}.png", (200, 40 * i, 90), size=(80, 60))
    report = explain.main([*common, "--images", "photos", "--prompt", "a person surfing; a person skiing",
                           "--top-k", "2", "--out", "o2"])
    rows = list(csv.DictReader(open(tmp_path / "o2" / "predictions.csv")))
    assert [r["file"] for r in rows] == ["0.png", "1.png"]
    assert {r["top1"] for r in rows} | {r["top2"] for r in rows} == {"a person surfing", "a person skiing"}
    assert "accuracy" not in report["metrics"]


def test_explain_refuses_a_prompt_without_clip(tmp_path):
    import explain

    with pytest.raises(SystemExit, match="--prompt needs --clip"):
        explain.main(["--checkpoint", "x", "--prompt", "a", "--images", str(tmp_path)])
    with pytest.raises(SystemExit, match="give --checkpoint .* or --clip"):
        explain.main(["--images", str(tmp_path)])


def test_full_finetuning_of_the_image_tower_is_an_option(tmp_path, monkeypatch):
    import finetune_clip
    from sportsnet.engine import load_checkpoint

    monkeypatch.chdir(tmp_path)
    result = finetune_clip.main(script_args(tmp_path, "--shots", "4", "--seeds", "1", "--methods", "zero-shot",
                                            "--full-finetune", "--finetune-epochs", "2", "--finetune-lr", "1e-3",
                                            "--batch-size", "8", "--name", "ft"))
    row = next(r for r in result["rows"] if r["method"] == "full-finetune")
    assert 0 <= row["test"] <= 1 and 0 <= row["val"] <= 1 and row["hparams"]["epochs"] == 2
    assert "| full-finetune |" in (result["run_dir"] / "results.md").read_text()
    torch.manual_seed(0)  # the script's random weights
    start = load_clip("tiny-vit-test", "none").model.visual.state_dict()
    tuned = load_checkpoint(result["run_dir"] / "ft-4-1" / "checkpoints" / "best.pt")["model"]
    assert not torch.equal(tuned["visual.conv1.weight"], start["conv1.weight"])  # the tower itself was trained


def test_a_clip_weights_pickle_that_runs_code_is_refused(tmp_path):
    evil, marker = tmp_path / "open_clip_pytorch_model.bin", tmp_path / "pwned"
    write_malicious_pickle(evil, "x", marker, nest="state_dict")
    with pytest.raises(RuntimeError, match="refusing to load .*weights_only=True"):
        load_clip("tiny-vit-test", str(evil))
    assert not marker.exists()

