"""sportsnet.engine.contrastive: the loss, exact accumulation, the 2-process gather, retrieval metrics."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import clip_tiny
from sportsnet.engine.contrastive import (average_gradients, clip_loss, contrastive_backward, gather_features,
                                          retrieval_metrics, train_contrastive_epoch)
from sportsnet.models.clip import load_clip

clip_tiny.register()


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_loss_equals_open_clips_clip_loss(scale):
    from open_clip.loss import ClipLoss

    img, txt = unit(12, 16, 0), unit(12, 16, 1)
    torch.testing.assert_close(clip_loss(img, txt, scale), ClipLoss()(img, txt, scale))
    matched = clip_loss(img, img, scale)  # perfect pairs: lower loss than random ones
    assert matched < clip_loss(img, txt, scale)
    # bf16 features are scored in float32.
    torch.testing.assert_close(clip_loss(img.bfloat16(), txt.bfloat16(), scale),
                               ClipLoss()(img.bfloat16().float(), txt.bfloat16().float(), scale))
    with pytest.raises(ValueError, match=r"\(12, 16\) and text_features \(11, 16\)"):
        clip_loss(img, txt[:11], scale)


def tiny_batch(n=8, seed=0):
    torch.manual_seed(seed)
    bundle = load_clip("tiny-vit-test", "none")
    x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    tokens = bundle.tokenizer([f"a photo of thing number {i}" for i in range(n)])
    return bundle, x, tokens


def grads_of(model, micro_batches, **kw):
    model.zero_grad(set_to_none=True)
    loss = contrastive_backward(model, micro_batches, **kw)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b, rtol=1e-4):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=rtol * float(a[k].abs().max()) + 1e-8, msg=k)


def test_accumulated_gradients_equal_one_big_batch():
    bundle, x, tokens = tiny_batch()
    model = bundle.model.train()
    loss1, g1 = grads_of(model, [(x, tokens)])
    loss4, g4 = grads_of(model, [(x[i:i + 2], tokens[i:i + 2]) for i in range(0, 8, 2)])
    torch.testing.assert_close(loss4, loss1)
    assert_same_grads(g1, g4)
    assert float(g1["logit_scale"].abs()) > 0  # the temperature learns, and is counted once
    # Summing per-micro-batch losses (the naive way) is a different objective: fewer negatives.
    model.zero_grad(set_to_none=True)
    for i in range(0, 8, 2):
        contrastive_backward(model, [(x[i:i + 2], tokens[i:i + 2])])
    assert not torch.allclose(model.logit_scale.grad, g1["logit_scale"], rtol=1e-2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    import clip_tiny as ct

    ct.register()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        half = slice(rank * 4, rank * 4 + 4)
        # 1. The gathered loss is the loss of the concatenated batch; feature gradients come back.
        img, txt = unit(8, 16, 0)[half].requires_grad_(), unit(8, 16, 1)[half].requires_grad_()
        loss = clip_loss(*gather_features(img, txt), 20.0)
        loss.backward()
        # 2. A training step's gradients (2 micro-batches per rank, averaged over ranks).
        bundle, x, tokens = tiny_batch()
        model = bundle.model.train()
        model.zero_grad(set_to_none=True)
        step_loss = contrastive_backward(model, [(x[half][:2], tokens[half][:2]), (x[half][2:], tokens[half][2:])])
        average_gradients([p for p in model.parameters()])
        torch.save({"loss": loss.detach(), "img_grad": img.grad, "txt_grad": txt.grad, "step_loss": step_loss,
                    "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_see_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    img, txt = unit(8, 16, 0).requires_grad_(), unit(8, 16, 1).requires_grad_()
    full = clip_loss(img, txt, 20.0)
    full.backward()
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["loss"], full.detach())
        # Every rank's loss is the global one, so each rank's features collect 2x its gradient.
        torch.testing.assert_close(got["img_grad"] / 2, img.grad[r * 4:r * 4 + 4])
        torch.testing.assert_close(got["txt_grad"] / 2, txt.grad[r * 4:r * 4 + 4])
    bundle, x, tokens = tiny_batch()
    loss1, g1 = grads_of(bundle.model.train(), [(x, tokens)])
    for got in ranks:
        torch.testing.assert_close(got["step_loss"], loss1)
        assert_same_grads(g1, got["grads"])


def test_retrieval_metrics_count_any_caption_of_an_image():
    # 3 images with 2 captions each; features on the unit circle so the rankings are known.
    angle = lambda a: torch.tensor([[torch.cos(torch.tensor(a)), torch.sin(torch.tensor(a))]])  # noqa: E731
    images = torch.cat([angle(0.0), angle(1.0), angle(2.0)])
    texts = torch.cat([angle(0.05), angle(1.9),     # image 0's captions: one near it, one near image 2
                       angle(1.05), angle(0.9),     # image 1's: both near it
                       angle(2.5), angle(0.4)])     # image 2's: one near it, one nearest image 0
    text_image = torch.tensor([0, 0, 1, 1, 2, 2])
    m = retrieval_metrics(images, texts, text_image, ks=(1, 2, 3))
    # i2t@1: image 0 -> text 0 (hit), image 1 -> text 2 (hit), image 2 -> text 1 (image 0's): 2/3.
    assert m["i2t_R@1"] == pytest.approx(2 / 3)
    # t2i@1: texts 0,2,3 hit; text 1 -> image 2 (miss), text 4 -> image 2 (hit), text 5 -> image 0 (miss).
    assert m["t2i_R@1"] == pytest.approx(4 / 6)
    # @2: image 2 now finds text 4 too; texts 1 and 5 still miss (their image is third).
    assert m["i2t_R@2"] == pytest.approx(1.0) and m["t2i_R@2"] == pytest.approx(4 / 6)
    assert m["t2i_R@3"] == m["i2t_R@3"] == 1.0
    with pytest.raises(ValueError, match=r"text_image must be \(6,\) image indices in \[0, 3\)"):
        retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 1, 2, 3]))


def test_training_steps_lower_the_loss_and_clamp_the_temperature():
    bundle, x, tokens = tiny_batch(16)
    model = bundle.model
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)  # the learnable temperature's start
    with torch.no_grad():
        model.logit_scale.fill_(5.0)  # above log(100): clamped after the first step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = [(x[i:i + 4], tokens[i:i + 4]) for i in range(0, 16, 4)] * 5
    first = train_contrastive_epoch(model, loader, opt, device=torch.device("cpu"), accum_steps=2, progress=False,
                                    log_every=1)
    assert first.steps == 10 and first.pairs == 80 and len(first.logs) == 10
    assert model.logit_scale.item() <= torch.log(torch.tensor(100.0)) + 1e-6
    assert first.logs[-1].loss < first.logs[0].loss
    with pytest.raises(ValueError, match="fewer than accum_steps=3 batches"):
        train_contrastive_epoch(model, loader[:2], opt, device=torch.device("cpu"), accum_steps=3, progress=False)


def test_pretrain_script_lifts_retrieval_and_its_checkpoint_loads_in_zero_shot(tmp_path, monkeypatch, caplog):
    import json

    import pretrain_clip
    import zero_shot_clip

    monkeypatch.chdir(tmp_path)  # the synthetic captions are written under ./data
    common = ["--model", "tiny-vit-test", "--data", "synthetic", "--workers", "0", "--no-progress",
              "--synthetic-size", "64", "--out", "runs", "--precision", "fp32"]
    result = pretrain_clip.main([*common, "--pretrained", "none", "--epochs", "6", "--lr", "1e-3",
                                 "--batch-size", "16", "--accum-steps", "2", "--warmup-steps", "10", "--name", "pre"])
    run = result["run_dir"]
    before, after = result["results"]["test, before training"], result["results"][f"test, best (epoch {result['best_epoch']})"]
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
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())
    caplog.clear()
    zs = zero_shot_clip.main([*common, "--pretrained", ckpt, "--cache-dir", "", "--name", "zs"])
    assert 0 <= zs["top1"] <= 1 and "initialized randomly" not in caplog.text
    with pytest.raises(SystemExit, match="holds tiny-vit-test weights, not tiny-rn-test: pass --model tiny-vit-test"):
        zero_shot_clip.main([*common, "--model", "tiny-rn-test", "--pretrained", ckpt, "--name", "zs2"])


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0 must be >= 1"),
    (["--lock-image", "--lock-text"], "leave nothing to train"),
    (["--batch-size", "700"], "the train split has 600 pairs, fewer than one step's 700"),
])
def test_pretrain_bad_command_lines(tmp_path, monkeypatch, args, message):
    import pretrain_clip

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


RUNNER = ("import sys; sys.path[:0] = [{tests!r}, {experiments!r}]; import clip_tiny; clip_tiny.register(); "
          "import pretrain_clip; pretrain_clip.main(sys.argv[1:])")


@pytest.mark.parametrize("procs, workers", [(1, 0), (2, 1)], ids=["1 process", "torchrun 2 processes, 1 worker each"])
def test_pretrain_killed_after_an_epoch_resumes_to_the_same_weights(tmp_path, procs, workers):
    """Killed after epoch 1, resumed: the same weights as an uninterrupted run. Under torchrun, with
    loader workers: every rank resumes its own RNG stream, and workers are reseeded per rank and epoch."""
    import signal
    import subprocess
    import sys

    from conftest import EXPERIMENTS
    from sportsnet.engine import load_checkpoint

    code = RUNNER.format(tests=str(EXPERIMENTS.parent / "tests"), experiments=str(EXPERIMENTS))
    args = ["--model", "tiny-vit-test", "--pretrained", "none", "--data", "synthetic", "--workers", str(workers),
            "--precision", "fp32",
            "--no-progress", "--synthetic-size", "64", "--epochs", "2", "--lr", "1e-3", "--batch-size", str(32 // procs),
            "--warmup-steps", "5", "--out", "runs"]
    launch = [sys.executable] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "--no-python",
        sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def start(*extra):
        return subprocess.Popen([*launch, "-c", code, *extra], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)

    from clip_data import SYNTHETIC_CLIP, SYNTHETIC_DEFAULTS
    from sportsnet.data import make_synthetic_sports

    make_synthetic_sports(tmp_path / SYNTHETIC_CLIP, **{**SYNTHETIC_DEFAULTS, "size": 64})  # once, before both runs
    full = start(*args, "--name", "full")  # the uninterrupted run and the victim run side by side (one thread each)
    victim = start(*args, "--name", "killed")
    for line in victim.stdout:
        if "epoch 1: loss" in line:  # logged after last.pt of epoch 1 is written
            # SIGKILL at once to every process that trains: torchrun's workers first, then torchrun.
            for pid in ([] if procs == 1 else _children(victim.pid)) + [victim.pid]:
                os.kill(pid, signal.SIGKILL)
            break
    victim.communicate(timeout=60)
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out
    ckpt = load_checkpoint(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1
    if procs > 1:
        assert len(ckpt["rng_ranks"]) == procs and torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng"]["torch"])
        assert not torch.equal(ckpt["rng_ranks"][1]["torch"], ckpt["rng"]["torch"])  # ranks draw apart
    else:
        assert "rng_ranks" not in ckpt
    resumed = start("--resume", "runs/killed", "--no-progress")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming after epoch 1 of 2" in out
    a = load_checkpoint(tmp_path / "runs" / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "killed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["results"] == b["results"] and a["best_epoch"] == b["best_epoch"]
    with pytest.raises(SystemExit, match=r"drop --lr"):
        import pretrain_clip

        pretrain_clip.main(["--resume", str(tmp_path / "runs" / "killed"), "--lr", "0.1"])
