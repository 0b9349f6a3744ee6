"""zero_shot_clip.py with no weights to be had: the offline demo, pre-trained once and then reused."""
import json
import logging

import pytest

from sportsnet.apps import zero_shot_clip
from tests.support import clip_tiny
from tests.support.clip_tiny import register

# The demo's mechanism on a tiny model; the real recipe's accuracy and time are measured in the README.
TINY_RECIPE = ["--model", "tiny-rn-test", "--pretrained", "none", "--data", "synthetic", "--epochs", "2",
               "--lr", "1e-3", "--batch-size", "32", "--warmup-steps", "2", "--seed", "0"]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache (huggingface_hub reads the cache folder at each call) and
    HF_HUB_OFFLINE=1: nothing can be downloaded."""
    import huggingface_hub.constants

    register()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # data/ and runs/ land here
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(zero_shot_clip, "DEMO_PRETRAIN", TINY_RECIPE)
    return tmp_path


def test_no_weights_runs_the_offline_demo_then_reuses_its_model_and_resumes_a_stopped_one(offline_hub, capsys,
                                                                                          caplog):
    args = ["--no-progress", "--precision", "fp32", "--synthetic-size", "64"]
    first = zero_shot_clip.main(args)
    out = capsys.readouterr().out.strip().splitlines()
    said = [line for line in out if "offline CLIP demo" in line]
    assert len(said) == 1 and said[0].startswith(
        "no ViT-B-32 weights 'openai' here (not in the cache, and HF_HUB_OFFLINE is set) and no dataset at "
        "data/sports100: running the offline CLIP demo")
    assert not [line for line in out if line.startswith("no dataset")]  # said once, in that line
    assert out[-1] == f"zero-shot top-1 accuracy: {100 * first['top1']:.2f}%"
    [demo] = (offline_hub / "runs").glob("clip-demo-*")
    best = demo / "checkpoints" / "best.pt"
    assert best.is_file() and (demo / "retrieval.json").is_file()
    assert first["run_dir"].name.startswith("zeroshot-tiny-rn-test-best.pt-synthetic-")
    written = best.stat().st_mtime_ns

    second = zero_shot_clip.main([*args, "--name", "again"])
    assert "| test, before training |" not in capsys.readouterr().out  # no second pre-training run
    assert best.stat().st_mtime_ns == written and list((offline_hub / "runs").glob("clip-demo-*")) == [demo]
    assert second["top1"] == first["top1"]

    # A demo stopped after its last epoch, before the final scoring: resumed, not restarted (one demo run
    # serves both checks).
    (demo / "retrieval.json").unlink()
    caplog.set_level(logging.INFO)
    zero_shot_clip.main([*args, "--name", "third"])
    assert "resuming after epoch 2 of 2" in caplog.text and (demo / "retrieval.json").is_file()


@pytest.mark.parametrize("args", [["--pretrained", "laion2b_s34b_b79k"], ["--model", "RN50"]])
def test_weights_the_user_named_are_an_error_not_a_demo(offline_hub, args):
    with pytest.raises(SystemExit, match="HF_HUB_OFFLINE is set"):
        zero_shot_clip.main(["--no-progress", *args])
    assert not (offline_hub / "runs").exists()


clip_tiny.register()


def script_args(tmp_path, *extra):
    return ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--out", str(tmp_path / "runs"),
            "--precision", "fp32",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "0", *extra]


def test_zero_shot_script_runs_without_weights_and_writes_its_reports(tmp_path, monkeypatch, capsys):
    from sportsnet.apps import zero_shot_clip

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
