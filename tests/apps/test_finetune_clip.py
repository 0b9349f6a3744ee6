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


def test_every_method_under_both_protocols_end_to_end(tmp_path, monkeypatch):
    """All eleven methods, both protocols, two draws of 1 and 16 shots, on a tiny random CLIP: heads that learn
    from the shots beat the random zero-shot head, the result file renders as the docs' table, and the trained
    methods leave loss curves in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sportsnet.apps import finetune_clip
    from sportsnet.apps.fewshot import METHODS, PROTOCOLS
    from sportsnet.results import read_result, use_results_dir

    monkeypatch.chdir(tmp_path)
    with use_results_dir(tmp_path / "results"):
        result = finetune_clip.main(script_args(
            tmp_path, "--shots", "1,16", "--seeds", "1,2", "--steps", "60", "--coop-steps", "10",
            "--lora-steps-per-shot", "1", "--augment-views", "2", "--synthetic-eval-per-class", "30",
            "--results", "fewshot_test"))
        rendered = finetune_clip.fewshot_table(read_result("fewshot_test"))
    run, s = result["run_dir"], result["summary"]
    assert list(s) == list(PROTOCOLS) and all(list(s[p]) == list(METHODS) for p in PROTOCOLS)
    assert len(result["rows"]) == 2 * 2 * len(METHODS) * len(PROTOCOLS)
    zero = s["validation"]["zero-shot"]["16"]["mean"]
    # Random weights: the zero-shot head is a random guess, and the features carry little; heads that learn from
    # the shots must still do clearly better (300 test images, two draws: 0.05 is > 2.5 standard deviations).
    for method in ("linear-probe", "wise-ft", "gda"):
        assert s["validation"][method]["16"]["mean"] > zero + 0.05, (method, s["validation"][method], zero)
    free = {m: s["validation-free"][m]["16"]["mean"] for m in ("tip-adapter-f", "lp++", "gda", "clap")}
    assert max(free.values()) > zero + 0.05, (free, zero)
    assert all(r["seconds"] >= 0 for r in result["rows"])
    for protocol in PROTOCOLS:
        assert f"**{protocol}**: test top-1" in rendered
    assert "| clip-lora" in rendered and "training seconds" in rendered and "validation-free fixes" in rendered
    assert "## validation-free" in (run / "results.md").read_text()
    events = EventAccumulator(str(run)).Reload()
    tags = set(events.Tags()["scalars"])
    for method in ("clip-adapter", "tip-adapter-f", "lp++", "clap", "coop", "clip-lora"):
        assert f"train_loss/{method}/16-shot/seed1" in tags, (method, sorted(tags)[:20])


def test_gda_at_one_shot_needs_augmented_views(tmp_path, monkeypatch):
    from sportsnet.apps import finetune_clip

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="GDA at --shots 1 needs --augment-views >= 1"):
        finetune_clip.main(script_args(tmp_path, "--shots", "1", "--augment-views", "0"))
    with pytest.raises(SystemExit, match="--protocols must be a non-empty subset"):
        finetune_clip.main(script_args(tmp_path, "--protocols", "test-set"))


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


def test_the_table_program_writes_the_result_file_the_docs_render(tmp_path, monkeypatch):
    """benchmarks/fewshot.py with --data (the 100-Sports path; here the synthetic set and a tiny random CLIP): the
    result file is named by the data and the host, and flags after -- reach finetune_clip.py."""
    from benchmarks import fewshot
    from sportsnet.apps.finetune_clip import fewshot_table
    from sportsnet.results import environment, read_result, result_stem, use_results_dir

    monkeypatch.chdir(tmp_path)
    with use_results_dir(tmp_path / "results"):
        out = fewshot.main(["--data", "synthetic", "--model", "tiny-vit-test", "--pretrained", "none", "--shots", "2",
                            "--seeds", "1", "--runs", str(tmp_path / "runs"), "--", "--methods", "zero-shot,gda",
                            "--augment-views", "1", "--workers", "0", "--precision", "fp32",
                            "--cache-dir", str(tmp_path / "cache")])
        stem = result_stem("fewshot_synthetic", torch.device("cpu"), environment(torch.device("cpu")))
        assert out["result_file"].name == f"{stem}.json"
        payload = read_result(stem)
    assert payload["config"]["augment_views"] == 1 and payload["seeds"] == [1] and payload["shots"] == ["2"]
    assert "| gda" in fewshot_table(payload)
