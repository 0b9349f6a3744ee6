"""The explorer: its answers against explain.py's for the same files, CLIP with edited class names and prompts, the
Gradio app answering a real request through its client API, and the page rendered in a real headless browser
(Debian's chromium): it opens with its first image explained, and the overlay region holds the overlay."""
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sportsnet.apps import explain, explore, train_vgg19
from sportsnet.apps.explore import Explorer
from sportsnet.data import load_rgb
from sportsnet.models.prompts import prompt_sets
from sportsnet.models.zero_shot import ZeroShotClassifier
from tests.support.browser import Browser, find_chromium, region_stats
from tests.support.clip_tiny import needs_open_clip, register

# The page's tests need Gradio (the app extra); the Explorer's own do not. Checked without importing it: collection
# in every worker would pay for its import.
needs_gradio = pytest.mark.skipif(importlib.util.find_spec("gradio") is None,
                                  reason="the explorer's extra is not installed (pip install 'sportsnet[app]')")


# The first overlay of the gallery, once its image has loaded: its box on the page, scrolled into view.
FIRST_OVERLAY = """(() => {
  const img = [...document.querySelectorAll('#overlays img')].find(i => i.complete && i.naturalWidth > 0);
  if (!img) return null;
  img.scrollIntoView({block: 'center'});
  const r = img.getBoundingClientRect();
  return JSON.stringify({x: r.x + window.scrollX, y: r.y + window.scrollY, width: r.width, height: r.height});
})()"""


def train_tiny_run(tmp: Path) -> Path:
    """A tiny VGG19 run (3 classes at 32 px, one epoch): the explorer needs a run, not a good one."""
    args = ["--data", "synthetic", "--synthetic-root", str(tmp / "syn"), "--synthetic-classes", "3",
            "--synthetic-train-per-class", "24", "--synthetic-eval-per-class", "4", "--synthetic-size", "32",
            "--image-size", "32", "--width", "0.125", "--phase1-epochs", "0", "--phase2-epochs", "1", "--batch-size",
            "16", "--pool", "1", "--out", str(tmp / "runs"), "--name", "tiny", "--no-progress", "--workers", "0",
            "--gradcam-images", "0", "--cache-dir", str(tmp / "cache"), "--precision", "fp32"]
    train_vgg19.main(args)
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("explore"))


@pytest.fixture(scope="module")
def explorer(run):
    return Explorer.from_run(run, device="cpu", precision="fp32")


def test_the_run_s_test_images_are_offered_one_class_at_a_time(explorer, run):
    folders = [Path(p).parent.name for p in explorer.examples]
    assert len(explorer.examples) == 12  # 3 classes x 4 test images
    assert folders[:3] == sorted(explorer.class_names) and set(folders) == set(explorer.class_names)
    assert all(str(run.parent.parent / "syn" / "test") in p for p in explorer.examples)


def test_answers_match_explain_py_on_the_same_file(explorer, run, tmp_path):
    """Same decoding, preprocessing, classes, map and faithfulness numbers as the batch program."""
    image = explorer.examples[4]
    (tmp_path / "one").mkdir()
    shutil.copy(image, tmp_path / "one" / "x.jpg")
    explain.main(["--checkpoint", str(run), "--images", str(tmp_path / "one"), "--top-k", "3", "--method",
                  "gradcam", "--out", str(tmp_path / "out"), "--no-progress", "--precision", "fp32", "--device",
                  "cpu"])
    [row] = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    got = explorer.explain(image, ["gradcam"], top_k=3)
    assert [name for name, _ in got.top] == [row["top1"], row["top2"], row["top3"]]
    assert [p for _, p in got.top] == pytest.approx([float(row[f"score{k}"]) for k in (1, 2, 3)], abs=1e-5)
    assert got.target == row["top1"]
    theirs = np.asarray(Image.open(tmp_path / "out" / "overlays" / "x_top1.png").convert("RGB")).astype(int)
    assert np.abs(np.asarray(got.overlays["gradcam"]).astype(int) - theirs).max() <= 1
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    for key in ("deletion_auc", "insertion_auc", "average_drop"):
        assert got.scores["gradcam"][key] == pytest.approx(metrics[f"{key}/gradcam"], abs=1e-4), key


def test_methods_side_by_side_with_refusals_and_errors(explorer, tmp_path):
    got = explorer.explain(explorer.examples[0], ["gradcam", "scorecam", "legrad", "GradCAMPlusPlus"], top_k=2)
    assert list(got.maps) == ["gradcam", "scorecam", "gradcam++"] and list(got.refused) == ["legrad"]
    assert "no vision transformer" in got.refused["legrad"]
    for m, v in got.maps.items():
        assert v.shape == (32, 32) and torch.isfinite(v).all() and v.max() > v.min(), m
        assert 0 <= got.scores[m]["deletion_auc"] <= 1 and got.seconds[m] > 0
    assert not torch.equal(got.maps["gradcam"], got.maps["scorecam"])  # each method its own map
    png = got.side_by_side(tmp_path / "all.png")
    assert Image.open(png).size[0] > Image.open(png).size[1] * 2  # the image and three overlays in a row
    with pytest.raises(ValueError, match="'nope' is not one of"):
        explorer.explain(explorer.examples[0], ["nope"])
    with pytest.raises(ValueError, match="no CAM method chosen"):
        explorer.explain(explorer.examples[0], [])
    with pytest.raises(ValueError, match="CLIP only"):
        explorer.explain(explorer.examples[0], class_names=["a", "b"])


def test_program_refuses_bad_flags_by_name(run, tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint .*nowhere: no such run folder"):
        explore.main(["--checkpoint", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="--methods: method='nope'"):
        explore.main(["--checkpoint", str(run), "--methods", "gradcam,nope"])
    with pytest.raises(SystemExit, match="give --checkpoint .* or --clip"):
        explore.main([])
    with pytest.raises(SystemExit, match="--images .*missing is not a folder"):
        Explorer.from_run(run, device="cpu", images=tmp_path / "missing")


@needs_open_clip
def test_clip_class_names_and_prompts_are_editable(explorer):
    register()
    names = ["air hockey", "archery", "baseball"]
    clip = Explorer.from_clip("tiny-rn-test", "none", names, device="cpu", precision="fp32",
                              images=explorer.examples[0].rsplit("/", 2)[0])
    image = clip.examples[0]
    x = clip.transform(load_rgb(image))[None]

    def by_hand(texts, templates):
        head = ZeroShotClassifier.from_names(clip.clip_bundle, texts, templates).eval()
        with torch.no_grad():
            return head(x).softmax(dim=1)[0]

    got = clip.explain(image, ["gradcam"], top_k=3)
    want = by_hand(names, prompt_sets()["sports"])
    assert dict(got.top) == pytest.approx({n: float(p) for n, p in zip(names, want)}, abs=1e-5)
    edited = clip.explain(image, ["gradcam"], top_k=2, class_names=["surfing", " ", "chess"])
    assert {n for n, _ in edited.top} == {"surfing", "chess"}
    want = by_hand(["surfing", "chess"], prompt_sets()["sports"])
    assert dict(edited.top) == pytest.approx({"surfing": float(want[0]), "chess": float(want[1])}, abs=1e-5)
    prompts = clip.explain(image, ["gradcam"], top_k=2, prompts=["a photo of a dog", "a red disc"])
    want = by_hand(["a photo of a dog", "a red disc"], ["{}"])
    assert dict(prompts.top) == pytest.approx({"a photo of a dog": float(want[0]), "a red disc": float(want[1])},
                                              abs=1e-5)
    assert prompts.maps["gradcam"].shape == x.shape[-2:] and torch.isfinite(prompts.maps["gradcam"]).all()
    with pytest.raises(ValueError, match="at least two"):
        clip.explain(image, ["gradcam"], class_names=["only one"])


@needs_open_clip
def test_a_pretrain_clip_run_opens_as_clip_over_its_data_s_classes(tmp_path, monkeypatch):
    """A pretrain_clip.py checkpoint records its architecture: the run opens as CLIP zero-shot over the class
    folders of its data's test split (cleaned for prompts), offering that split's images."""
    from sportsnet.apps.clip_data import SYNTHETIC_CLIP
    from sportsnet.data import make_synthetic_sports
    from sportsnet.models.clip import load_clip
    from sportsnet.serialization import save_checkpoint

    register()
    monkeypatch.chdir(tmp_path)
    make_synthetic_sports(SYNTHETIC_CLIP, num_classes=3, train_per_class=2, eval_per_class=2, size=32)
    bundle = load_clip("tiny-rn-test", "none")
    save_checkpoint(tmp_path / "runs" / "clip" / "checkpoints" / "best.pt",
                    {"arch": "tiny-rn-test", "model": bundle.model.state_dict(), "config": {"data": "synthetic"}})
    clip = Explorer.from_run(tmp_path / "runs" / "clip", device="cpu", precision="fp32")
    assert clip.is_clip and clip.class_names == ["air hockey", "amputee football", "archery"]
    assert len(clip.examples) == 6 and all(Path(p).parts[:3] == ("data", "synthetic_clip", "test")
                                           for p in clip.examples)
    got = clip.explain(clip.examples[0], ["gradcam"], top_k=3)
    assert {n for n, _ in got.top} == set(clip.class_names) and torch.isfinite(got.maps["gradcam"]).all()


@needs_gradio
def test_app_answers_a_real_request_through_its_client(explorer, tmp_path):
    from gradio_client import Client, handle_file

    app = explore.build_app(explorer, explain_on_load=False)
    app.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        image = explorer.examples[5]
        label, gallery, table, download = client.predict(handle_file(image), ["gradcam", "legrad", "scorecam"], 2,
                                                         "", "", api_name="/explain")
        want = explorer.explain(image, ["gradcam", "scorecam"], top_k=2)
        assert label["label"] == want.target
        assert [c["label"] for c in label["confidences"]] == [n for n, _ in want.top]
        assert [g["caption"] for g in gallery] == [f"gradcam -> {want.target}", f"scorecam -> {want.target}"]
        for g, m in zip(gallery, ["gradcam", "scorecam"]):  # the maps, losslessly: the same pixels
            assert np.array_equal(np.asarray(Image.open(g["image"]).convert("RGB")), np.asarray(want.overlays[m]))
        rows = {r[0]: r for r in table["data"]}
        assert rows["gradcam"][1] == pytest.approx(want.scores["gradcam"]["deletion_auc"], abs=1e-4)
        assert rows["legrad"][-1].startswith("refused:")
        assert Image.open(download).format == "PNG"
        with pytest.raises(Exception, match="pick or upload an image first"):
            client.predict(None, ["gradcam"], 2, "", "", api_name="/explain")
        fake = tmp_path / "not_an_image.png"  # refused by Gradio's image component before our handler
        fake.write_text("hello")
        with pytest.raises(Exception):
            client.predict(handle_file(fake), ["gradcam"], 2, "", "", api_name="/explain")
        again = client.predict(handle_file(image), ["gradcam"], 2, "", "", api_name="/explain")  # still serving
        assert again[0]["label"] == want.target
    finally:
        app.close()


@needs_gradio
def test_the_page_opens_with_an_overlay_in_a_headless_browser(explorer, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client (the test extra) drives the browser")
    chromium, why = find_chromium()
    if chromium is None:
        pytest.skip(why)
    app = explore.build_app(explorer, methods=["gradcam"])
    app.launch(prevent_thread_lock=True, quiet=True)
    browser = Browser(chromium)
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=app.local_url)
        box = json.loads(browser.wait_for(FIRST_OVERLAY))
        assert box["width"] >= 32 and box["height"] >= 32, box
        shot = browser.screenshot(box)
        browser.screenshot().save(tmp_path / "page.png")  # for a human when this fails
        shot.save(tmp_path / "overlay.png")
    finally:
        browser.close()
        app.close()
    want = explorer.explain(explorer.examples[0], ["gradcam"]).overlays["gradcam"]
    mean, spread = region_stats(shot)
    want_mean, want_spread = region_stats(want)
    assert spread > 10, f"the overlay region is blank (pixel deviation {spread:.1f}); see {tmp_path}"
    # The thumbnail is the overlay scaled (and maybe cropped) by the page: its colours, not its pixels.
    assert np.abs(mean - want_mean).max() < 40, (mean, want_mean, tmp_path)


def test_models_no_one_here_wrote(tmp_path):
    """The Explorer around a torchvision ResNet and a timm ViT (random weights, nothing downloaded): the CNN's maps
    come from its default layer and it refuses the transformer-native methods; the ViT answers LeGrad and rollout
    too; a bad top-k is named."""
    import timm
    import torchvision

    from sportsnet.data.transforms import build_transforms

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    names = ["a", "b", "c", "d", "e"]
    torch.manual_seed(0)
    models = {"resnet": torchvision.models.resnet18(weights=None, num_classes=5),
              "vit": timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                                       num_classes=5)}
    for kind, model in models.items():
        explorer = Explorer(model.eval(), names, build_transforms(False, 32), (0.5,) * 3, (0.25,) * 3, name=kind,
                            device=torch.device("cpu"), precision="fp32")
        got = explorer.explain(image, ["gradcam", "scorecam", "legrad", "rollout"], top_k=3)
        assert len(got.top) == 3 and sum(p for _, p in got.top) <= 1 + 1e-6
        answered = ["gradcam", "scorecam"] + (["legrad", "rollout"] if kind == "vit" else [])
        assert list(got.maps) == answered and list(got.refused) == ([] if kind == "vit" else ["legrad", "rollout"])
        for m in answered:
            assert got.maps[m].shape == (32, 32) and torch.isfinite(got.maps[m]).all(), (kind, m)
        with pytest.raises(ValueError, match="top_k=0 must be >= 1"):
            explorer.explain(image, ["gradcam"], top_k=0)
