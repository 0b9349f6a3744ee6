"""pretrain_clip: contrastive pre-training through fit (the lifecycle VGG training has), end to end on the
synthetic captions: retrieval lifts, the checkpoint is a weights file, kills and SIGTERM resume exactly,
a NaN leaves nonfinite.pt."""
import os
import signal
from pathlib import Path

import pytest
import torch

from sportsnet.apps import pretrain_clip
from sportsnet.apps.clip_data import SYNTHETIC_CLIP, SYNTHETIC_DEFAULTS
from sportsnet.data import make_synthetic_sports
from sportsnet.engine import load_checkpoint
from sportsnet.engine.contrastive import ContrastiveStep
from sportsnet.models.clip import load_clip
from tests.support import ROOT, clip_tiny

clip_tiny.register()


def test_pretrain_script_lifts_retrieval_and_its_checkpoint_loads_in_zero_shot(tmp_path, monkeypatch, caplog):
    import json

    from sportsnet.apps import zero_shot_clip

    monkeypatch.chdir(tmp_path)  # the synthetic captions are written under ./data
    common = ["--model", "tiny-vit-test", "--data", "synthetic", "--workers", "0", "--no-progress",
              "--synthetic-size", "64", "--out", "runs", "--precision", "fp32"]
    result = pretrain_clip.main([*common, "--pretrained", "none", "--epochs", "6", "--lr", "1e-3",
                                 "--batch-size", "16", "--accum-steps", "2", "--warmup-steps", "10", "--name", "pre"])
    run = result["run_dir"]
    results = result["results"]
    before, after = results["test, before training"], results[f"test, best (epoch {result['best_epoch']})"]
    chance = 1 / 100  # 100 test images, one caption each
    # Reported in the README: text->image R@1 from ~chance to several times chance in seconds on CPU.
    assert after["t2i_R@1"] >= 5 * chance and after["t2i_R@1"] > before["t2i_R@1"], (before, after)
    assert after["t2i_R@10"] > before["t2i_R@10"] + 0.2 and after["i2t_R@10"] > before["i2t_R@10"] + 0.2
    saved = json.loads((run / "retrieval.json").read_text())
    assert saved["results"][f"test, best (epoch {result['best_epoch']})"] == pytest.approx(after)
    assert "| test, before training |" in (run / "retrieval.md").read_text()
    assert (run / "checkpoints" / "last.pt").is_file() and list(run.glob("events.out.tfevents.*"))
    # The checkpoint is a weights file for the other scripts.
    ckpt = str(result["checkpoint"])
    loaded = load_clip("tiny-vit-test", ckpt)
    state = torch.load(ckpt, weights_only=True)["model"]
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    caplog.clear()
    zs = zero_shot_clip.main([*common, "--pretrained", ckpt, "--cache-dir", "", "--name", "zs"])
    assert 0 <= zs["top1"] <= 1 and "initialized randomly" not in caplog.text
    with pytest.raises(SystemExit, match="holds tiny-vit-test weights, not tiny-rn-test: pass --model tiny-vit-test"):
        zero_shot_clip.main([*common, "--model", "tiny-rn-test", "--pretrained", ckpt, "--name", "zs2"])


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--lock-image", "--lock-text"], "leave nothing to train"),
    (["--batch-size", "700"], "the train split has 600 pairs, fewer than one step's 700"),
])
def test_pretrain_bad_command_lines(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        pretrain_clip.main(["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--workers", "0",
                            "--synthetic-size", "64", "--no-progress", *args])


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


RUNNER = ROOT / "tests" / "support" / "pretrain_tiny.py"


# One process is covered by the SIGTERM test below and by train_vgg19's SIGKILL tests (the same fit).
@pytest.mark.parametrize("procs, workers", [(2, 1)], ids=["torchrun 2 processes, 1 worker each"])
def test_pretrain_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, procs, workers):
    """Killed after epoch 1, resumed: the same weights as an uninterrupted run. Under torchrun, with
    loader workers: every rank resumes its own RNG stream, and workers are reseeded per rank and epoch.

    The killed run is the uninterrupted one's folder as a SIGKILL would leave it: every process of the run is
    stopped (SIGSTOP) once epoch 1's last.pt is written, the folder copied, and the run continued (SIGCONT). A
    killed process writes nothing more, so the copy is what it leaves on disk, and one torchrun job fewer starts
    (each costs its ranks' imports, ~10 s of a core apiece)."""
    import shutil
    import subprocess
    import sys

    args = ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--workers", str(workers),
            "--precision", "fp32",
            "--no-progress", "--synthetic-size", "64", "--epochs", "2", "--lr", "1e-3",
            "--batch-size", str(32 // procs),
            "--warmup-steps", "5", "--out", "runs"]
    launch = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "--no-python",
        sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def start(*extra):
        return subprocess.Popen([*launch, str(RUNNER), *extra], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)

    make_synthetic_sports(tmp_path / SYNTHETIC_CLIP, **{**SYNTHETIC_DEFAULTS, "size": 64})
    full = start(*args, "--name", "full")
    lines = []
    for line in full.stdout:
        lines.append(line)
        if "epoch 1/2 (pretrain)" in line:  # logged after last.pt of epoch 1 is written
            # Every process that trains, torchrun's workers first, then torchrun: what SIGKILL would stop.
            stopped = ([] if procs == 1 else _children(full.pid)) + [full.pid]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            try:
                shutil.copytree(tmp_path / "runs" / "full", tmp_path / "runs" / "killed")
            finally:
                for pid in reversed(stopped):
                    os.kill(pid, signal.SIGCONT)
            break
    else:
        full.wait(timeout=60)
        pytest.fail("the run ended without logging epoch 1/2:\n" + "".join(lines)[-3000:])
    ckpt = load_checkpoint(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt")
    resumed = start("--resume", "runs/killed", "--no-progress")  # while the uninterrupted run finishes
    assert ckpt["epoch"] == 1
    if procs > 1:
        assert len(ckpt["rng_ranks"]) == procs and torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng"]["torch"])
        assert not torch.equal(ckpt["rng_ranks"][1]["torch"], ckpt["rng"]["torch"])  # ranks draw apart
    else:
        assert "rng_ranks" not in ckpt
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, "".join(lines) + out
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming after epoch 1 of 2" in out
    a = load_checkpoint(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["results"] == b["results"] and a["best_epoch"] == b["best_epoch"]
    with pytest.raises(SystemExit, match=r"drop --lr"):
        pretrain_clip.main(["--resume", str(tmp_path / "runs" / "killed"), "--lr", "0.1"])


def _args(workers: int = 0) -> list[str]:
    return ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--workers", str(workers),
            "--precision", "fp32", "--no-progress", "--synthetic-size", "64", "--epochs", "2", "--lr", "1e-3",
            "--batch-size", "16", "--accum-steps", "2", "--warmup-steps", "5", "--out", "runs", "--log-every", "4"]


def _inject(monkeypatch, at_call: int, action) -> None:
    """Run ``action(model)`` just before the ``at_call``-th training step (1-based) of this process."""
    real, calls = ContrastiveStep.__call__, [0]

    def step(self, model, batch, **kw):
        calls[0] += 1
        if calls[0] == at_call:
            action(model)
        return real(self, model, batch, **kw)

    monkeypatch.setattr(ContrastiveStep, "__call__", step)


def test_pretrain_sigterm_mid_epoch_resumes_bit_identically(tmp_path, monkeypatch):
    """SIGTERM during epoch 2: the step finishes, last.pt is written there, the exit code says which
    signal; the resumed run ends with the weights, results and history of an uninterrupted one."""
    monkeypatch.chdir(tmp_path)
    make_synthetic_sports(tmp_path / SYNTHETIC_CLIP, **{**SYNTHETIC_DEFAULTS, "size": 64})
    pretrain_clip.main([*_args(), "--name", "full"])
    with monkeypatch.context() as m:
        _inject(m, 25, lambda model: os.kill(os.getpid(), signal.SIGTERM))  # 18 steps an epoch: step 7 of epoch 2
        with pytest.raises(SystemExit) as stop:
            pretrain_clip.main([*_args(), "--name", "stopped"])
    assert stop.value.code == 128 + signal.SIGTERM
    run = tmp_path / "runs" / "stopped"
    mid = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (1, 7, 25)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with fit
    pretrain_clip.main(["--resume", str(run), "--no-progress"])
    a = load_checkpoint(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 36
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["results"] == b["results"] and a["best_epoch"] == b["best_epoch"]
    assert [h["val_mean_recall"] for h in a["history"]] == [h["val_mean_recall"] for h in b["history"]]


def test_pretrain_nan_stops_with_nonfinite_pt_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def poison(model):
        with torch.no_grad():
            model.logit_scale.fill_(float("nan"))

    _inject(monkeypatch, 21, poison)  # step 3 of epoch 2 (18 steps an epoch): found at its log step 4, global 22
    with pytest.raises(SystemExit, match=r"error: training loss is nan at step 22 .*precision fp32\); the weights at "
                                         r"that point are in .*nonfinite\.pt, the last good checkpoint is"):
        pretrain_clip.main([*_args(), "--name", "nan"])
    ckpts = tmp_path / "runs" / "nan" / "checkpoints"
    diag = load_checkpoint(ckpts / "nonfinite.pt")
    assert torch.isnan(diag["model"]["logit_scale"]) and diag["arch"] == "tiny-vit-test"
    good = load_checkpoint(ckpts / "last.pt")
    assert good["epoch"] == 1 and torch.isfinite(good["model"]["logit_scale"])
    assert load_clip("tiny-vit-test", str(ckpts / "last.pt")).name == "tiny-vit-test"  # still a weights file
