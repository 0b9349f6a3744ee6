"""train.py end to end on a tiny synthetic set: torchvision and timm backbones (a CNN, a ConvNeXt, a ViT)
train through the shared run and explain.py explains their runs at the family's default layer; the
transfer recipe's phases; ImageNet weights from each library's file; one-line errors."""
import json

import pytest
import torch

from sportsnet.apps import explain, runs, train
from sportsnet.models.backbones import build_classifier, head_name, parse_arch

BACKBONES = {"torchvision:resnet18": "layer4", "timm:convnext_atto": "stages.3",
             "timm:vit_tiny_patch16_224": "blocks.11.norm1"}


def tiny_args(tmp_path, name, arch, *extra):
    """3 classes x 40 images at 32 px: one epoch of the head alone, one of everything; seconds on 2 cores."""
    return ["--arch", arch, "--data", "synthetic", "--synthetic-root", str(tmp_path.parent / "syn"),
            "--synthetic-classes", "3", "--synthetic-train-per-class", "40", "--synthetic-eval-per-class", "6",
            "--synthetic-size", "32", "--image-size", "32", "--phase1-epochs", "1", "--phase2-epochs", "1",
            "--batch-size", "16", "--precision", "fp32", "--out", str(tmp_path / "runs"), "--name", name,
            "--no-progress", "--workers", "0", "--gradcam-images", "4", "--cache-dir", str(tmp_path.parent / "cache"),
            *extra]


@pytest.mark.parametrize("arch", list(BACKBONES))
def test_a_backbone_trains_and_its_run_is_explained(tmp_path, arch, capsys):
    acc = train.main(tiny_args(tmp_path, "run", arch))
    run = tmp_path / "runs" / "run"
    for f in ("config.json", "checkpoints/last.pt", "checkpoints/best.pt", "test_report.json", "gradcam_grid.png"):
        assert (run / f).is_file(), f
    report = json.loads((run / "test_report.json").read_text())
    phases = [h["phase"] for h in report["history"]]
    assert report["top1"] == pytest.approx(acc) and phases == [0, 1]  # the head phase, then everything
    model, cfg, classes = runs.load_run(run)
    assert cfg.arch == arch and len(classes) == 3 and model.sportsnet_arch == arch
    out = explain.main(["--checkpoint", str(run), "--data", "synthetic", "--method", "GradCAM,ablationcam",
                        "--limit", "6", "--out", str(tmp_path / "explain"), "--no-progress", "--precision", "fp32"])
    assert out["target_layer"] == [BACKBONES[arch]] and out["methods"] == ["gradcam", "ablationcam"]
    assert {"pointing_game/gradcam", "pointing_game/ablationcam", "deletion_auc/gradcam"} <= set(out["metrics"])
    assert (tmp_path / "explain" / "grid.png").is_file()
    if arch == "torchvision:resnet18":  # told a layout its layer cannot have: one line naming the flags
        with pytest.raises(SystemExit, match=r"error: layer 'layer4' gives a tensor of shape \(\d+, 512, 1, 1\), "
                                             r"which layout='BND' cannot read .* \(here: --layout, --prefix-tokens\)"):
            explain.main(["--checkpoint", str(run), "--data", "synthetic", "--limit", "2", "--layout", "BND", "--out",
                          str(tmp_path / "explain-bnd"), "--no-progress"])


def test_the_transfer_recipe_trains_the_head_then_everything():
    cfg = train.BackboneConfig(arch="timm:convnext_atto", lr=1e-3, phase1_epochs=2, phase2_epochs=3,
                               phase2_lr_factor=0.1, weights="none", image_size=32)
    model = cfg.build_model(5)
    head, finetune = cfg.build_phases(model)
    head_params = list(model.get_submodule(head_name(model)).parameters())
    assert (head.name, head.epochs, head.lr) == ("head", 2, 1e-3) and head.groups == {"head": head_params}
    assert (finetune.name, finetune.epochs) == ("finetune", 3) and finetune.lr == pytest.approx(1e-4)
    everything = finetune.groups["base"] + finetune.groups["head"]
    assert len(everything) == len(list(model.parameters())) and finetune.groups["head"] == head_params
    no_head = train.BackboneConfig(arch="resnet18", phase1_epochs=0, phase2_epochs=1).build_phases(model)
    assert [p.name for p in no_head] == ["finetune"]


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:convnext_atto"])
def test_imagenet_weights_load_from_the_librarys_file(tmp_path, arch):
    """A state dict of the library's own model (what its ImageNet file holds) becomes the backbone; the head is
    new. torchvision's through our weights_only load, timm's through its own loader."""
    spec = parse_arch(arch)
    torch.manual_seed(7)
    if spec.library == "timm":
        import timm

        imagenet = timm.create_model(spec.name)
    else:
        import torchvision

        imagenet = torchvision.models.get_model(spec.name)
    path = tmp_path / "weights.pth"
    torch.save(imagenet.state_dict(), path)
    torch.manual_seed(0)
    model = build_classifier(arch, 3, weights=path)
    head = head_name(model)
    mine, theirs = model.state_dict(), imagenet.state_dict()
    body = [k for k in mine if not k.startswith(head + ".")]
    assert body and all(torch.equal(mine[k], theirs[k]) for k in body)
    assert model.get_submodule(head).out_features == 3


def test_bad_command_lines_and_missing_weights_are_one_line(tmp_path, monkeypatch):
    base = tiny_args(tmp_path, "bad", "timm:convnext_atto")
    for extra, message in [(["--arch", "resnet5O"], r"--arch: arch='resnet5O' is not a torchvision or timm classifier; "
                                                     r"close matches: .*resnet50"),
                           (["--phase1-epochs", "0", "--phase2-epochs", "0"], "nothing to train"),
                           (["--lr", "-0.1"], "--lr -0.1: must be > 0"),
                           (["--data", str(tmp_path / "nowhere")], "no such dataset folder"),
                           (["--weights", str(tmp_path / "missing.pth")], "missing.pth: no such file")]:
        with pytest.raises(SystemExit, match=message):
            train.main(base + extra)
    # No file in the cache and no way to fetch it (conftest sets HF_HUB_OFFLINE): one line, nothing made.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache
    for arch, message in [("timm:convnext_atto", "timm's convnext_atto .* HF_HUB_OFFLINE is set.*--weights /path/to"),
                          ("torchvision:resnet18",
                           "resnet18 are not on this machine, and .*--weights /path/to/resnet18")]:
        if arch.startswith("torchvision"):
            import socket

            def no_lookup(*args, **kwargs):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

            monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
        with pytest.raises(SystemExit, match=message) as info:
            train.main(tiny_args(tmp_path, "offline", arch, "--weights", "imagenet"))
        assert "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_compare_backbones_explains_a_finished_run_and_tables_it(tmp_path, results_dir):
    from sportsnet.apps import compare_backbones

    out = tmp_path / "backbones"
    acc = train.main(tiny_args(tmp_path, "timm-convnext_atto", "timm:convnext_atto", "--out", str(out),
                               "--phase1-epochs", "0"))
    payload = compare_backbones.main(["--archs", "timm:convnext_atto", "--out", str(out), "--explain-limit", "4",
                                      "--results", "backbones_test"])
    row, = payload["rows"]  # the finished run is reused, not trained again
    assert row["test_acc1"] == pytest.approx(acc) and row["epochs"] == 1 and row["target_layer"] == ["stages.3"]
    assert row["explained_images"] == 4 and 0 <= row["pointing_game_gradcam"] <= 1 and row["parameters"] > 3e6
    saved = json.loads((results_dir / "backbones_test.json").read_text())
    assert saved["rows"] == payload["rows"] and "hardware" in saved["environment"]
    table = compare_backbones.backbones_table(saved)
    assert "| timm:convnext_atto |" in table and "pointing game (ablationcam)" in table
