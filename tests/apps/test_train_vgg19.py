"""The training script end to end on a tiny synthetic set (CPU)."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sportsnet.apps import runs, supervised, train_vgg19
from sportsnet.engine import load_checkpoint
from tests.support import EXPERIMENTS

# The tiny set: 3 classes x 120 training images (40 per class in valid and in test) at 48 px.
PER_CLASS = 120
TRAIN = 3 * PER_CLASS
STEPS = TRAIN // 16  # training steps per epoch at --batch-size 16 (the last, partial batch is dropped)


def tiny_args(tmp_path, name, *extra, epochs=2, epochs_flag="--phase2-epochs", data=None):
    """The tiny set, width 1/8: about a second per epoch on 2 cores (``epochs_flag``: ``--epochs`` for the
    single-phase recipe; ``data``: a dataset folder instead of the synthetic set)."""
    synthetic = ["--data", "synthetic", "--synthetic-root", str(tmp_path / "syn"), "--synthetic-classes", "3",
                 "--synthetic-train-per-class", str(PER_CLASS), "--synthetic-eval-per-class", "40",
                 "--synthetic-size", "48"]
    return [*(synthetic if data is None else ["--data", str(data)]), "--image-size", "48", "--width", "0.125",
            epochs_flag, str(epochs), "--batch-size", "16", "--lr", "3e-3", "--dropout", "0", "--label-smoothing", "0",
            "--out", str(tmp_path / "runs"), "--name", name, "--no-progress", "--workers", "0", "--log-every", "10",
            "--cache-dir", str(tmp_path / "cache"), *extra]


# bf16 once: on a CPU without native bf16 it is emulated and several times slower than fp32.
@pytest.mark.parametrize("precision, channels_last", [("fp32", True), ("fp32", False), ("bf16", True)])
def test_two_epochs_learn_well_above_chance(tmp_path, precision, channels_last, capsys):
    flag = "--channels-last" if channels_last else "--no-channels-last"
    acc = train_vgg19.main(tiny_args(tmp_path, "run", "--precision", precision, flag))
    # 3 classes: chance is 1/3; on 120 test images 0.55 is 5 standard deviations above it
    # (we measured 0.64-0.82 over seeds 0-1 for fp32 and bf16 on a 2-core AMD EPYC without native bf16).
    assert acc > 0.55
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"test top-1 accuracy: {100 * acc:.2f}%"
    run = tmp_path / "runs" / "run"
    report = json.loads((run / "test_report.json").read_text())
    assert report["top1"] == pytest.approx(acc) and len(report["per_class"]) == 3
    assert report["run"]["precision"] == precision
    for f in ("test_report.md", "test_confusion_matrix.png", "test_per_class_accuracy.png", "config.json",
              "checkpoints/last.pt", "checkpoints/best.pt", "gradcam_grid.png"):
        assert (run / f).is_file(), f


def test_tensorboard_has_the_named_scalars_and_images_and_the_run_records_what_auto_chose(tmp_path):
    """The TensorBoard tags of a run; and config.json and the checkpoints hold the precision and layout auto
    picked on this machine, so a resume elsewhere continues with them (auto itself is decided per machine:
    test_hardware.py)."""
    from sportsnet.data import make_synthetic_sports
    from sportsnet.hardware import choose_channels_last, choose_precision

    # A dataset folder, not --data synthetic: the offline demo's preset (NCHW) would decide the layout; without
    # that preset the recipe's head-only phase runs unless --phase1-epochs 0 says otherwise.
    root = make_synthetic_sports(tmp_path / "syn", num_classes=3, train_per_class=PER_CLASS, eval_per_class=40, size=48)
    train_vgg19.main(tiny_args(tmp_path, "tb", "--weights", "none", "--phase1-epochs", "0", data=root))
    run = tmp_path / "runs" / "tb"
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/train", "loss/val", "acc1/train", "acc1/val", "acc5/train", "acc5/val", "lr/base", "lr/head",
                "throughput/images_per_s", "train/loss_step", "acc1/test"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("acc1/val")] == [1, 2]
    assert {"val/confusion_matrix", "val/per_class_accuracy", "val/gradcam"} <= set(acc.Tags()["images"])
    assert [e.step for e in acc.Images("val/gradcam")] == [1, 2]
    assert "config/text_summary" in acc.Tags()["tensors"]
    expected = {"precision": choose_precision("auto", "cpu").value,
                "channels_last": choose_channels_last(None, "cpu").value}
    config_json = json.loads((run / "config.json").read_text())
    for saved in (config_json, load_checkpoint(run / "checkpoints" / "last.pt")["config"]):
        assert {k: saved[k] for k in expected} == expected


# One thread per run: the runs of the interruption tests go side by side on a 2-core machine.
THREADS = 1


def run_script(args):
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    return subprocess.Popen([sys.executable, str(EXPERIMENTS / "train_vgg19.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@contextmanager
def threads_of_run_script():
    """In this process, the thread count run_script's processes have (bit-identical results need the same
    reduction order); the runs that need no signal run here, without a new interpreter's 10 s of imports."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The three ways a run is interrupted: the signal, and how long after epoch 1's log line it is sent.
INTERRUPTIONS = {"sigkill-at-epoch-end": (signal.SIGKILL, 0.0), "sigkill-mid-epoch": (signal.SIGKILL, 0.3),
                 "sigterm-mid-epoch": (signal.SIGTERM, 0.3)}


def _interrupt_after_epoch_1(victim: subprocess.Popen, sig: int, delay: float) -> str:
    """Signal ``victim`` ``delay`` s after epoch 1's log line (written right after last.pt of epoch 1 is in
    place; an epoch takes a second or two here, so 0.3 s lands in epoch 2); returns everything it printed."""
    lines = []
    for line in victim.stdout:
        lines.append(line)
        if "epoch 1/3" in line:
            time.sleep(delay)
            victim.send_signal(sig)
            break
    return "".join(lines) + victim.communicate(timeout=180)[0]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The three victim runs, started together (a new interpreter's imports take ~10 s on one core: side by
    side they overlap), each signalled from its own thread; meanwhile the uninterrupted reference trains in
    this process. Returns the reference's last.pt and, per interruption, (run folder, exit code, output).
    No Grad-CAM grid: what is checked is the weights, and the grid costs each run a few seconds."""
    from concurrent.futures import ThreadPoolExecutor

    runs_of = {name: tmp_path_factory.mktemp(name) for name in INTERRUPTIONS}
    victims = {name: run_script(tiny_args(tmp, "killed", "--precision", "fp32", "--gradcam-images", "0", epochs=3))
               for name, tmp in runs_of.items()}
    with ThreadPoolExecutor(len(victims)) as pool:
        outputs = {name: pool.submit(_interrupt_after_epoch_1, victims[name], *INTERRUPTIONS[name])
                   for name in victims}
        full = tmp_path_factory.mktemp("full")
        with threads_of_run_script():
            train_vgg19.main(tiny_args(full, "full", "--precision", "fp32", "--gradcam-images", "0", epochs=3))
        printed = {name: future.result() for name, future in outputs.items()}  # each victim has exited
    results = {name: (runs_of[name] / "runs" / "killed", victims[name].returncode, printed[name]) for name in victims}
    return load_checkpoint(full / "runs" / "full" / "checkpoints" / "last.pt"), results


@pytest.mark.parametrize("name", list(INTERRUPTIONS))
def test_killed_or_stopped_then_resumed_matches_an_uninterrupted_run(interrupted, name, caplog):
    uninterrupted, results = interrupted
    run, returncode, out = results[name]
    sig = INTERRUPTIONS[name][0]
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    # Where exactly the signal lands depends on timing; each place must resume exactly.
    # (test_engine stops at a chosen step, deterministically.)
    if sig == signal.SIGKILL:
        assert returncode == -signal.SIGKILL, out
        assert last["epoch"] in (1, 2) and "step_in_epoch" not in last
        expected = f"resuming after epoch {last['epoch']}"
    else:  # the current step finishes, a checkpoint is written there, the exit says how to go on
        assert returncode == 128 + signal.SIGTERM, out
        assert f"continue with: python experiments/train_vgg19.py --resume {run}" in out
        if "step_in_epoch" in last:
            step, epoch = last["step_in_epoch"], last["epoch"] + 1
            assert 0 < step < STEPS and f"SIGTERM: stopped at step {step}/{STEPS} of epoch {epoch}" in out
            expected = f"resuming epoch {epoch} at step {step}"
        else:
            assert f"SIGTERM: stopped after epoch {last['epoch']}" in out
            expected = f"resuming after epoch {last['epoch']}"

    caplog.set_level(logging.INFO)
    with threads_of_run_script():
        train_vgg19.main(["--resume", str(run), "--no-progress"])
    assert expected in caplog.text

    a, b = uninterrupted, load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["val_acc1"] for h in a["history"]] == [h["val_acc1"] for h in b["history"]]
    assert [h["train_loss"] for h in a["history"]] == pytest.approx([h["train_loss"] for h in b["history"]])


def test_resume_refuses_flags_that_would_change_the_run(tmp_path):
    train_vgg19.main(tiny_args(tmp_path, "r", "--precision", "fp32", epochs=1))
    with pytest.raises(SystemExit, match=r"drop --lr \(only .* may change\)"):
        train_vgg19.resolve_config(["--resume", str(tmp_path / "runs" / "r"), "--lr", "0.1"])
    # A checkpoint that does not fit (here: one class more than its weights have) names the tensors.
    from sportsnet.engine import save_checkpoint

    ckpt = load_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "best.pt")
    ckpt["classes"] = ckpt["classes"] + ["extra"]
    save_checkpoint(tmp_path / "other.pt", ckpt)
    with pytest.raises(SystemExit, match=r"does not fit the model its config describes \(vgg19\S* "
                                         r"\(reduce256-two-phase, width 0.125\), 4 classes\): "
                                         r"2 shape mismatches: \['\S+: checkpoint \(3, \d+\) vs model \(4, "):
        runs.load_run(tmp_path / "other.pt")


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--width", "0.5", "--weights", "imagenet"], "--weights imagenet needs --width 1.0"),
    (["--freeze-layers", "60", "--recipe", "seed000"], r"--freeze-layers 60 must be an integer in \[0, 53\]"),
    (["--phase2-epochs", "0"], "every phase has 0 epochs"),
])
def test_bad_command_lines_fail_before_any_work(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        train_vgg19.main(tiny_args(tmp_path, "bad", epochs_flag="--epochs" if "seed000" in args else "--phase2-epochs")
                         + args)
    assert not (tmp_path / "syn").exists() and not (tmp_path / "runs").exists()


def test_torchrun_two_processes_then_resume_in_one_and_evaluation_matches_one_process(tmp_path, caplog):
    """gloo on CPU: the ranks split the data, only rank 0 writes, SIGTERM to torchrun stops every rank
    at the same step with one checkpoint, a single process resumes it, and the validation accuracy
    (summed over the ranks' evaluation shards) is exactly a one-process evaluation of the same weights."""
    from sportsnet.data import Sports100, build_transforms
    from sportsnet.engine import evaluate

    args = tiny_args(tmp_path, "ddp", "--precision", "fp32", "--batch-size", "8", "--gradcam-images", "0", epochs=3)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 str(EXPERIMENTS / "train_vgg19.py"), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in launcher.stdout:
        lines.append(line)
        if "epoch 1/3" in line:
            time.sleep(0.2)
            launcher.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + launcher.communicate(timeout=120)[0]
    assert "2 process(es)" in out and "Unable to shutdown" not in out, out
    run = tmp_path / "runs" / "ddp"
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    epoch, step = ckpt["epoch"], ckpt.get("step_in_epoch", 0)
    # 360 images / 2 ranks / 8 per batch = 22 steps per epoch per rank (not 45: the data was split).
    per_rank = TRAIN // 2 // 8
    assert ckpt["world_size"] == 2 and epoch in (1, 2) and len(ckpt["history"]) == epoch
    assert ckpt["global_step"] == per_rank * epoch + step and 0 <= step < per_rank
    assert out.count("SIGTERM: stopped") == 1  # printed by rank 0 only
    assert len(list(run.glob("events.out.tfevents.*"))) == 1

    # The 2-process validation accuracy of the best epoch (summed over the ranks' shards) is exactly
    # a one-process evaluation of that epoch's weights (best.pt).
    model, cfg, classes = runs.load_run(run / "checkpoints" / "best.pt")
    transform = build_transforms(False, 48, resize_ratio=cfg.eval_resize_ratio)
    val = Sports100(tmp_path / "syn", "valid", transform=transform)
    one = evaluate(model, torch.utils.data.DataLoader(val, batch_size=32), device=torch.device("cpu"), num_classes=3,
                   progress=False)
    row = ckpt["history"][ckpt["best_epoch"] - 1]
    assert row["val_acc1"] == one.acc1 and row["val_loss"] == pytest.approx(one.loss)

    caplog.set_level(logging.INFO)
    with threads_of_run_script():  # one process: this one
        train_vgg19.main(["--resume", str(run), "--no-progress"])
    if step:
        assert "resuming a 2-process checkpoint with 1 processes" in caplog.text
        assert f"resuming epoch {epoch + 1} at step {2 * step} of {TRAIN // 8}" in caplog.text
    else:
        assert f"resuming after epoch {epoch}" in caplog.text
    final = load_checkpoint(run / "checkpoints" / "last.pt")
    assert final["epoch"] == 3 and final["world_size"] == 1 and len(final["history"]) == 3
    assert final["history"][:epoch] == ckpt["history"]


def test_an_unknown_flag_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_vgg19.main(tiny_args(tmp_path, "bad") + ["--bogus-flag", "3"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: unrecognized arguments: --bogus-flag 3" in err[0]
    assert not (tmp_path / "runs").exists()


def test_unreadable_images_are_counted_in_the_report_or_stop_the_run_under_strict(tmp_path):
    from sportsnet.data import make_synthetic_sports
    from tests.support.trees import write_truncated_jpeg

    make_synthetic_sports(tmp_path / "syn", num_classes=3, train_per_class=PER_CLASS, eval_per_class=40, size=48)
    (tmp_path / "data").mkdir()
    import shutil

    shutil.copytree(tmp_path / "syn", tmp_path / "data" / "sports", ignore=shutil.ignore_patterns("*.json", "*.csv"))
    root = tmp_path / "data" / "sports"
    cls = sorted(p.name for p in (root / "train").iterdir())[0]
    write_truncated_jpeg(root / "train" / cls / "zz_broken.jpg")
    (root / "train" / cls / "zz_empty.jpg").write_bytes(b"")
    args = tiny_args(tmp_path, "hostile", "--precision", "fp32", "--weights", "none", "--gradcam-images", "0",
                     epochs=1, data=root)
    with pytest.raises(SystemExit, match=r"error: cannot decode image .*zz_broken\.jpg.*--strict stops at the first"):
        train_vgg19.main(args + ["--strict", "--name", "strict"])
    train_vgg19.main(args)
    report = json.loads((tmp_path / "runs" / "hostile" / "test_report.json").read_text())
    assert sum(report["skipped"]["train"].values()) == 2, report["skipped"]
    # Not verified up front: the data-loader workers meet the files while training, and the report
    # still counts them (the workers' records reach the dataset in the main process).
    train_vgg19.main(args + ["--no-verify-images", "--data-path", "plain", "--workers", "2", "--name", "workers"])
    report = json.loads((tmp_path / "runs" / "workers" / "test_report.json").read_text())
    assert sum(report["skipped"]["train"].values()) == 2, report["skipped"]



def test_the_cache_path_feeds_the_model_what_the_plain_path_does(tmp_path, caplog):
    """Evaluation batches equal to the bit; training batches: same shapes, same augmentation statistics."""
    caplog.set_level(logging.INFO)
    batches = {}
    for path in ("cache", "plain"):
        cfg, _ = train_vgg19.resolve_config(tiny_args(tmp_path, path, "--data-path", path))
        _, splits, _, on_device = supervised.build_data(cfg)
        assert set(on_device) == ({"train", "valid", "test"} if path == "cache" else set())
        train, val, _ = supervised.loaders(cfg, splits, on_device, torch.device("cpu"))
        assert train.num_workers == val.num_workers == 0  # --workers 0

        def ready(loader, split, n):
            out = []
            for k, (x, y) in enumerate(loader):
                x = supervised.to_device(x, torch.device("cpu"), True)
                out.append((on_device[split](x) if split in on_device else x, y))
                if k + 1 == n:
                    break
            return out

        torch.manual_seed(0)
        train.generator.manual_seed(0)
        batches[path] = ready(val, "valid", 100), ready(train, "train", 20)
    assert f"decoded-image cache: {TRAIN} images of 48x48" in caplog.text
    (val_c, train_c), (val_p, train_p) = batches["cache"], batches["plain"]
    for (a, ya), (b, yb) in zip(val_c, val_p, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    a, b = torch.cat([x for x, _ in train_c]), torch.cat([x for x, _ in train_p])
    assert a.shape == b.shape == (320, 3, 48, 48) and a.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(a, b)  # other draws ...
    torch.testing.assert_close(a.mean((0, 2, 3)), b.mean((0, 2, 3)), atol=0.05, rtol=0)  # ... same distribution
    torch.testing.assert_close(a.std((0, 2, 3)), b.std((0, 2, 3)), atol=0.05, rtol=0)


def test_resume_of_something_that_is_not_a_checkpoint_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(SystemExit, match=r"^error: --resume .*notes\.pt: .*not a torch"):
        train_vgg19.main(["--resume", str(tmp_path / "notes.pt")])
    with pytest.raises(SystemExit, match=r"^error: --resume .*missing: "):
        train_vgg19.main(["--resume", str(tmp_path / "missing")])
