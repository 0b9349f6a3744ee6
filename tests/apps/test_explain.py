"""experiments/explain.py end to end on a tiny model trained on the synthetic set (CPU)."""
import csv
import json

import pytest
from PIL import Image

from sportsnet.apps import explain, train_vgg19
from tests.support import clip_tiny
from tests.support.trees import write_image, write_truncated_jpeg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VGG19 (global-average-pooling head) trained for a few epochs: 3 classes at 48 px."""
    tmp = tmp_path_factory.mktemp("explain")
    args = ["--data", "synthetic", "--synthetic-root", str(tmp / "syn"), "--synthetic-classes", "3",
            "--synthetic-train-per-class", "300", "--synthetic-eval-per-class", "40", "--synthetic-size", "48",
            "--image-size", "48", "--width", "0.125", "--phase2-epochs", "4", "--batch-size", "16", "--lr", "3e-3",
            "--dropout", "0", "--label-smoothing", "0", "--pool", "1", "--out", str(tmp / "runs"), "--name", "tiny",
            "--no-progress", "--workers", "0", "--gradcam-images", "0", "--cache-dir", str(tmp / "cache"),
            "--precision", "fp32"]
    accuracy = train_vgg19.main(args)
    return tmp, tmp / "runs" / "tiny", accuracy


def test_explains_a_dataset_split_with_localisation_metrics(run, capsys):
    tmp, run_dir, accuracy = run
    out = tmp / "out"
    report = explain.main(["--checkpoint", str(run_dir), "--data", "synthetic", "--split", "test",
                           "--method", "gradcam,layercam", "--top-k", "2", "--out", str(out), "--no-progress",
                           "--deletion-steps", "4", "--precision", "fp32"])
    m = report["metrics"]
    assert report["images"] == 120 and report["boxes"] and report["pointing_tolerance_px"] == 3
    assert m["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    # The maps must point at the object more often than smooth random maps do. (This tiny 48 px
    # model's 3x3 maps do not beat the centre prior, which is reported too: see the README's demo.)
    # In fp32, over seeds 0-2, both data paths and both CPU classes (native bf16, and capped at AVX2),
    # we measured gradcam 0.14-0.66 above random (random 0.12-0.15); this seed: 0.45 and 0.56.
    assert m["pointing_game/random"] < 0.4
    assert m["pointing_game/gradcam"] > m["pointing_game/random"] + 0.10, m
    assert 0 < m["pointing_game/center"] <= 1
    assert m["energy_in_box/gradcam"] > m["energy_in_box/random"], m
    for key in ("deletion_auc/gradcam", "insertion_auc/layercam", "average_drop/gradcam",
                "increase_in_confidence/layercam", "pointing_game_strict/gradcam"):
        assert 0 <= m[key] <= (100 if "drop" in key or "increase" in key else 1), key
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 120 and set(rows[0]) == {"file", "true", "top1", "score1", "top2", "score2"}
    assert sum(r["true"] == r["top1"] for r in rows) / 120 == pytest.approx(accuracy, abs=1e-6)
    overlays = sorted((out / "overlays").rglob("*.png"))
    assert len(overlays) == 240  # top-1 and top-2 for every image
    with Image.open(overlays[0]) as im:
        assert im.size == (48, 48)
    with Image.open(out / "grid.png") as im:
        assert im.size[0] > 400
    assert json.loads((out / "metrics.json").read_text())["metrics"] == m
    assert "pointing_game/gradcam" in capsys.readouterr().out


def test_every_method_in_one_table(run, tmp_path, results_dir):
    """--method all: every method (or its reason for refusing the model), with the metrics and the time
    per image, written as a result file that benchmarks/tables.py renders."""
    from benchmarks import tables
    from sportsnet.cam import EXPLAINERS

    tmp, run_dir, _ = run
    report = explain.main(["--checkpoint", str(run_dir), "--data", "synthetic", "--split", "test", "--limit", "6",
                           "--method", "all", "--samples", "2", "--out", str(tmp_path / "out"), "--no-progress",
                           "--deletion-steps", "2", "--overlays", "0", "--precision", "fp32", "--road",
                           "--results", "explain_methods_test"])
    assert report["images"] == 6
    assert set(report["methods"]) | set(report["refused_methods"]) == set(EXPLAINERS)
    # CAM may refuse a head; the transformer-native methods refuse a CNN (a one-line reason each, reported).
    cnn_methods = [m for m, cls in EXPLAINERS.items() if not cls.transformer_only]
    assert len(report["methods"]) >= len(cnn_methods) - 1, report["refused_methods"]
    assert all("holds no vision transformer" in report["refused_methods"][m] for m in EXPLAINERS
               if EXPLAINERS[m].transformer_only)
    m = report["metrics"]
    for method in report["methods"]:
        assert m[f"seconds_per_image/{method}"] > 0 and 0 <= m[f"pointing_game/{method}"] <= 1, method
        assert -1 <= m[f"road_combined/{method}"] <= 1, method
    text = tables.render("explain_methods_test")
    assert all(f"| {method} " in text for method in report["methods"]) and "s / image" in text
    assert "ROAD combined" in text


def test_sanity_checks_and_metric_families_on_the_off_centre_split(run, tmp_path, results_dir):
    """--sanity and --robustness: the randomisation and random-logit columns, the flags they imply, the metric
    families, sanity.png and TensorBoard curves; --limit spreads over the classes; on the off-centre split the
    centre prior scores low."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from benchmarks import tables
    from sportsnet.cam.sanity import RANDOM_LOGIT_THRESHOLD, RANDOMISATION_THRESHOLD

    tmp, run_dir, _ = run
    out = tmp_path / "out"
    methods = ["gradcam", "guided-backprop", "eigencam"]
    report = explain.main(["--checkpoint", str(run_dir), "--data", "synthetic", "--split", "offcentre", "--limit", "6",
                           "--method", ",".join(methods), "--out", str(out), "--no-progress", "--deletion-steps", "0",
                           "--overlays", "0", "--precision", "fp32", "--robustness", "--sensitivity-samples", "2",
                           "--sanity", "--sanity-images", "4",
                           "--sanity-steps", "2", "--results", "explain_sanity_test"])
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["true"] for r in rows) == sorted(2 * sorted({r["true"] for r in rows})) and len(rows) == 6
    m, sanity = report["metrics"], report["sanity"]
    assert m["pointing_game/center"] < 0.35
    assert sanity["steps"][-1]["units"] == sanity["steps"][-1]["of"] and sanity["images"] == 4
    for method in methods:
        for key in ("sparseness", "faithfulness_correlation", "sanity_spearman", "sanity_ssim", "random_logit_ssim"):
            assert -1 <= m[f"{key}/{method}"] <= 1, (key, method)
        assert m[f"complexity/{method}"] >= 0 and m[f"max_sensitivity/{method}"] >= m[f"avg_sensitivity/{method}"] >= 0
        assert len(sanity["spearman"][method]) == len(sanity["steps"])
        failing = (m[f"sanity_spearman/{method}"] >= RANDOMISATION_THRESHOLD
                   or m[f"random_logit_ssim/{method}"] >= RANDOM_LOGIT_THRESHOLD)
        assert (method in sanity["flags"]) == failing, (method, m)
    # Eigen-CAM ignores the class: its map of another class is the same map.
    assert m["random_logit_ssim/eigencam"] == pytest.approx(1.0) and "eigencam" in sanity["flags"]
    assert (out / "sanity.png").is_file()
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("sanity/spearman/gradcam")) == len(sanity["steps"])
    text = tables.render("explain_sanity_test")
    assert "randomisation: Spearman" in text and "| **fails** |" in text and "Sanity checks on 4 of the images" in text


def test_a_folder_of_images_with_an_unreadable_one(run, tmp_path):
    _, run_dir, _ = run
    folder = tmp_path / "photos"
    for i in range(3):
        write_image(folder / "nested" / f"{i}.png", (40 * i, 90, 200), size=(60, 50))
    write_truncated_jpeg(folder / "broken.jpg")
    (folder / "notes.txt").write_text("not an image")
    report = explain.main(["--checkpoint", str(run_dir), "--images", str(folder), "--out", str(tmp_path / "o"),
                           "--no-progress", "--deletion-steps", "0", "--precision", "fp32"])
    assert report["images"] == 3 and not report["boxes"]
    assert report["skipped_files"][0]["path"] == "broken.jpg" and len(report["skipped_files"]) == 1
    assert "accuracy" not in report["metrics"] and "pointing_game/gradcam" not in report["metrics"]
    rows = list(csv.DictReader(open(tmp_path / "o" / "predictions.csv")))
    assert [r["file"] for r in rows] == ["nested/0.png", "nested/1.png", "nested/2.png"]
    assert (tmp_path / "o" / "overlays" / "nested" / "0_top1.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--data", "synthetic", "--images", "x"], "exactly one of --data"),
    (["--data", "synthetic", "--method", "gradcam3"], r"unknown method\(s\) \['gradcam3'\]"),
    (["--data", "synthetic", "--top-k", "9"], "--top-k 9 exceeds the model's 3 classes"),
    (["--data", "synthetic", "--layer", "features.99"], "no layer named 'features.99'"),
])
def test_bad_command_lines(run, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        explain.main(["--checkpoint", str(run[1]), "--out", str(tmp_path / "o"), "--no-progress", *args])


clip_tiny.register()


@pytest.mark.parametrize("name", ["tiny-vit-test", "tiny-rn-test"])
def test_explain_script_on_zero_shot_clip(name, tmp_path, monkeypatch):
    import csv

    from sportsnet.apps import explain
    from tests.support.trees import write_image

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
    from sportsnet.apps import explain

    with pytest.raises(SystemExit, match="--prompt has no effect without --clip"):
        explain.main(["--checkpoint", "x", "--prompt", "a", "--images", str(tmp_path)])
    with pytest.raises(SystemExit, match="give --checkpoint .* or --clip"):
        explain.main(["--images", str(tmp_path)])
