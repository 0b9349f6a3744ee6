"""finetune_clip: the few-shot ablation end to end on tiny random CLIP models."""
import pytest
import torch

from sportsnet.models.clip import load_clip
from tests.support import clip_tiny

clip_tiny.register()


def script_args(tmp_path, *extra):
    return ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--out", str(tmp_path / "runs"),
            "--precision", "fp32",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--workers", "0", *extra]


def test_few_shot_ablation_runs_and_adapters_beat_random_zero_shot(tmp_path, monkeypatch):
    from sportsnet.apps import finetune_clip

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
    from sportsnet.apps import finetune_clip

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"--shots \[100\] exceed the smallest class"):
        finetune_clip.main(script_args(tmp_path, "--shots", "4,100"))
    with pytest.raises(SystemExit, match="--shots entry 'x'"):
        finetune_clip.main(script_args(tmp_path, "--shots", "4,x"))


def test_full_finetuning_of_the_image_tower_is_an_option(tmp_path, monkeypatch):
    from sportsnet.apps import finetune_clip
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
