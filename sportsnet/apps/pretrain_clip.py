"""Contrastive image-text training of a CLIP model on captions (Flickr8k or the synthetic captions).

    python experiments/pretrain_clip.py --data /path/to/flickr8k --model ViT-B-32 --pretrained openai
    python experiments/pretrain_clip.py --data /path/to/flickr8k --lock-image      # train the text tower only
    python experiments/pretrain_clip.py --pretrained none --lr 5e-4 --epochs 20    # from scratch, synthetic captions
    python experiments/pretrain_clip.py --resume runs/<name>                       # continue after a crash or kill
    torchrun --nproc_per_node=4 experiments/pretrain_clip.py --data /path/to/flickr8k --batch-size 128

Trains with the symmetric InfoNCE loss (learnable temperature, clamped at 100) on the train split;
``--batch-size`` is per process and per micro-batch, the contrastive batch is batch x accum-steps x
processes (features are gathered across processes). After each epoch, image<->text Recall@1/5/10 on
the valid split picks the best checkpoint; the test split (Flickr8k's official lists; all five
captions of an image count as matches) is scored before training and with the best checkpoint.
Writes into runs/<name>/: checkpoints/{last,best}.pt, retrieval.{json,md} and TensorBoard events
(loss, temperature, learning rates, retrieval). A checkpoint is a weights file for the other scripts:

    python experiments/zero_shot_clip.py --model <the printed architecture> --pretrained runs/<name>/checkpoints/best.pt
"""
from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_data import SYNTHETIC_CLIP, SYNTHETIC_DEFAULTS  # noqa: E402
from common import (config_markdown, new_run_dir, option, parse_config, pick_device, precision_option,  # noqa: E402
                    setup_logging, timestamp, write_json)

from sportsnet.data import Captions, make_synthetic_sports, summarize_skipped  # noqa: E402
from sportsnet.engine import (capture_rng_state, load_checkpoint, rank_rng_restorer, rank_rng_states,  # noqa: E402
                              restore_rng_state, save_checkpoint)
from sportsnet.engine.contrastive import encode_retrieval_set, retrieval_metrics, train_contrastive_epoch  # noqa: E402
from sportsnet.engine.distributed import (barrier, broadcast_object, init_from_env, rank_seed, shutdown,  # noqa: E402
                                          start_rank_stream, world)
from sportsnet.engine.loop import make_grad_scaler  # noqa: E402
from sportsnet.engine.optim import warmup_cosine  # noqa: E402
from sportsnet.hardware import resolve_precision  # noqa: E402
from sportsnet.models.clip import load_clip  # noqa: E402

log = logging.getLogger("pretrain_clip")
RUNTIME_FLAGS = {"resume", "workers", "progress", "device", "log_every"}
DEFAULT_FLICKR = "data/flickr8k"


@dataclass
class PretrainConfig:
    data: str = option("", "Flickr8k folder (either layout) or 'synthetic'; empty: data/flickr8k if present")
    model: str = option("ViT-B-32", "open_clip architecture")
    pretrained: str = option("openai", "start from a pretrained tag, a local weights file, or 'none' (from scratch)")
    lock_image: bool = option(False, "freeze the image tower (LiT-style: only the text tower learns)")
    unlocked_image_groups: int = option(0, "with --lock-image: leave this many last layer groups trainable")
    lock_text: bool = option(False, "freeze the text tower")
    epochs: int = option(5, "passes over the train split")
    batch_size: int = option(64, "pairs per micro-batch and process")
    accum_steps: int = option(1, "micro-batches per optimizer step (exact: the loss sees all of them)")
    lr: float = option(1e-5, "peak learning rate (fine-tuning; from scratch use ~5e-4)")
    weight_decay: float = option(0.1, "AdamW weight decay of matrices (not of biases, norms, temperature)")
    warmup_steps: int = option(50, "linear warmup steps before cosine decay")
    grad_clip: float = option(0.0, "clip the gradient norm (0: off)")
    precision: str = precision_option()
    seed: int = option(0, "seed of initialisation, shuffling and caption choice")
    workers: int = option(2, "data-loader workers")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK)")
    out: str = option("runs", "folder for run folders")
    name: str = option("", "run folder name (default: pretrain-<model>-<weights>-<data>-<time>)")
    log_every: int = option(20, "optimizer steps between logged losses")
    progress: bool = option(True, "progress bars")
    resume: str = option("", "run folder (or its last.pt) to continue with its saved config")
    synthetic_size: int = option(SYNTHETIC_DEFAULTS["size"], "synthetic set: image side in pixels")


def resolve_captions(data: str) -> tuple[str, Path]:
    if not data:
        if Path(DEFAULT_FLICKR).is_dir():
            data = DEFAULT_FLICKR
        else:
            print(f"no dataset at {DEFAULT_FLICKR} (pass --data PATH): using the synthetic captions", flush=True)
            data = "synthetic"
    if data == "synthetic":
        return "synthetic", Path(SYNTHETIC_CLIP)
    if not Path(data).is_dir():
        raise SystemExit(f"error: --data {data} is not a folder (expected Flickr8k or 'synthetic')")
    return "flickr8k", Path(data)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; biases, norm gains, embeddings' scalars and the temperature are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"name": "decay", "params": decay, "weight_decay": weight_decay},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]


def retrieval_table(results: dict[str, dict[str, float]]) -> str:
    keys = [k for k in next(iter(results.values())) if k != "mean_recall"]
    head = "| weights | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    return head + "".join(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}" for k in keys) + " |\n"
                          for name, m in results.items())


def main(argv=None) -> dict:
    setup_logging()
    cfg, given = parse_config(PretrainConfig, argv, PretrainConfig(), __doc__)
    ckpt = None
    if cfg.resume:
        path = Path(cfg.resume)
        ckpt = load_checkpoint(path / "checkpoints" / "last.pt" if path.is_dir() else path)
        fixed = sorted(given - RUNTIME_FLAGS)
        if fixed:
            raise SystemExit(f"error: --resume continues with the run's saved config; drop "
                             f"{', '.join('--' + f.replace('_', '-') for f in fixed)} (only "
                             f"{', '.join(sorted('--' + f.replace('_', '-') for f in RUNTIME_FLAGS))} may change)")
        cfg = dataclasses.replace(PretrainConfig(**ckpt["config"]), **{k: getattr(cfg, k) for k in given})
    for flag in ("epochs", "batch_size", "accum_steps"):
        if getattr(cfg, flag) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} {getattr(cfg, flag)} must be >= 1")
    if not cfg.lr > 0:
        raise SystemExit(f"error: --lr {cfg.lr} must be > 0")
    if cfg.lock_image and cfg.lock_text:
        raise SystemExit("error: --lock-image and --lock-text together leave nothing to train but the temperature")
    kind, root = resolve_captions(cfg.data)
    device = init_from_env(cfg.device) or pick_device(cfg.device)
    rank, size = world()
    try:
        return _run(cfg, kind, root, device, rank, size, ckpt)
    finally:
        shutdown()


def _run(cfg: PretrainConfig, kind: str, root: Path, device: torch.device, rank: int, size: int,
         ckpt: dict | None = None) -> dict:
    precision = resolve_precision(cfg.precision, device)
    cfg = dataclasses.replace(cfg, precision=precision)  # checkpoints record what auto chose, for resumes
    if kind == "synthetic" and rank == 0:
        make_synthetic_sports(root, **{**SYNTHETIC_DEFAULTS, "size": cfg.synthetic_size})
    barrier()
    torch.manual_seed(cfg.seed)
    try:  # a resumed run gets its weights from the checkpoint, not from the (maybe unreachable) tag
        bundle = load_clip(ckpt["arch"] if ckpt else cfg.model, "none" if ckpt else cfg.pretrained, device=device)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    model, tokenizer = bundle.model, bundle.tokenizer
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.unlocked_image_groups, freeze_bn_stats=True)
    if cfg.lock_text:
        model.lock_text_tower()
    try:
        train = Captions(root, "train", transform=bundle.transforms(True), caption="random")
        evals = {s: Captions(root, s, transform=bundle.transforms(False), caption="first") for s in ("valid", "test")}
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    skipped = {s: summarize_skipped(d.verify()) for s, d in (("train", train), *evals.items())}
    per_step = cfg.batch_size * cfg.accum_steps * size
    if len(train) < per_step:
        raise SystemExit(f"error: the train split has {len(train)} pairs, fewer than one step's "
                         f"{per_step} (batch x accum-steps x processes)")

    def collate(batch):
        return torch.stack([x for x, _ in batch]), tokenizer([c for _, c in batch])

    sampler = DistributedSampler(train, seed=cfg.seed, drop_last=True) if size > 1 else None
    # Workers are started per epoch (not persistent), seeded from g, which is reseeded per rank and
    # epoch: ranks augment apart, and a resumed run augments as an uninterrupted one.
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, collate_fn=collate, generator=g, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader) // cfg.accum_steps
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = warmup_cosine(optimizer, cfg.epochs * steps_per_epoch, cfg.warmup_steps)
    scaler = make_grad_scaler(device, precision)

    def score(split: str) -> dict[str, float]:
        ds = evals[split]
        # Its own generator: worker seeds are not drawn from the training stream (only rank 0 scores).
        images = (x for x, _ in DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                                           generator=torch.Generator().manual_seed(0)))
        img, txt, text_image = encode_retrieval_set(model, images, ds.captions, tokenizer, device=device,
                                                    precision=precision)
        return retrieval_metrics(img, txt, text_image)

    pretrained = ckpt["pretrained"] if ckpt else bundle.pretrained
    if ckpt:
        run_dir = Path(cfg.resume) if Path(cfg.resume).is_dir() else Path(cfg.resume).parent.parent
    else:
        name = broadcast_object(cfg.name or f"pretrain-{bundle.name}-{Path(pretrained).stem}-{kind}-{timestamp()}")
        run_dir = new_run_dir(cfg.out, name) if rank == 0 else Path(cfg.out) / name
    writer = None
    results: dict[str, dict] = dict(ckpt["results"]) if ckpt else {}
    best, best_epoch, step, start = -1.0, 0, 0, 1
    if ckpt:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        best, best_epoch, step, start = ckpt["best"], ckpt["best_epoch"], ckpt["global_step"], ckpt["epoch"] + 1
        rank_rng_restorer(ckpt, cfg.seed, step)()  # this rank's own states
        log.info("resuming after epoch %d of %d (best valid mean recall %.3f at epoch %d)", ckpt["epoch"], cfg.epochs,
                 best, best_epoch)
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir))
        if not ckpt:
            writer.add_text("config", config_markdown(cfg))
            rng = capture_rng_state()  # scoring draws no randomness, but keep the training stream exact
            results["test, before training"] = score("test")
            restore_rng_state(rng)
            log.info("before training: %s", _fmt(results["test, before training"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s (%s): %d trainable parameters; %d train pairs, %d steps/epoch of %d pairs, precision %s, %d process(es)",
             bundle.name, pretrained, trainable, len(train), steps_per_epoch, per_step, precision, size)

    def on_log(entry):
        if writer is not None:
            writer.add_scalar("train/loss", entry.loss, entry.step)
            writer.add_scalar("train/temperature", 1 / entry.logit_scale, entry.step)
            writer.add_scalar("train/pairs_per_s", entry.pairs_per_s, entry.step)
            for group, lr in entry.lrs.items():
                writer.add_scalar(f"lr/{group}", lr, entry.step)

    if not ckpt:
        start_rank_stream(cfg.seed)
    meta = {"arch": bundle.name, "pretrained": pretrained, "config": {**dataclasses.asdict(cfg), "resume": ""}}
    for epoch in range(start, cfg.epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        g.manual_seed(rank_seed(cfg.seed + epoch))
        stats = train_contrastive_epoch(model, loader, optimizer, device=device, precision=precision,
                                        accum_steps=cfg.accum_steps, scaler=scaler, scheduler=scheduler,
                                        grad_clip=cfg.grad_clip, log_every=cfg.log_every, global_step=step,
                                        on_log=on_log, progress=cfg.progress, desc=f"epoch {epoch}/{cfg.epochs}")
        step += stats.steps
        rngs = rank_rng_states()  # every rank's, for an exact resume (a collective)
        if rank == 0:
            val = score("valid")
            for k, v in val.items():
                writer.add_scalar(f"valid/{k}", v, epoch)
            writer.add_scalar("train/epoch_loss", stats.loss, epoch)
            is_best = val["mean_recall"] > best
            if is_best:
                best, best_epoch = val["mean_recall"], epoch
                save_checkpoint(run_dir / "checkpoints" / "best.pt",
                                {"state_dict": model.state_dict(), **meta, "epoch": epoch, "valid": val})
            # last.pt after best.pt: a run killed in between resumes with both in place.
            save_checkpoint(run_dir / "checkpoints" / "last.pt", {
                "state_dict": model.state_dict(), **meta, "epoch": epoch, "valid": val, "global_step": step,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "scheduler": scheduler.state_dict(),
                "best": best, "best_epoch": best_epoch, "results": results, **rngs,
                "rng": rngs["rng_ranks"][0] if rngs else capture_rng_state()})
            log.info("epoch %d: loss %.4f, temperature %.4f; valid %s", epoch, stats.loss,
                     1 / float(model.logit_scale.detach().exp()), _fmt(val))
        barrier()
    if rank != 0:
        return {}
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)["state_dict"])
    results[f"test, best (epoch {best_epoch})"] = score("test")
    for k, v in results[f"test, best (epoch {best_epoch})"].items():
        writer.add_scalar(f"test/{k}", v, best_epoch)
    table = retrieval_table(results)
    chance = {"image->text R@1": 1 / max(1, len(evals["test"])), "test images": len(evals["test"])}
    write_json(run_dir / "retrieval.json", {"model": bundle.name, "pretrained": pretrained, "data": kind,
                                            "results": results, "best_epoch": best_epoch, "chance": chance,
                                            "skipped": skipped, "config": dataclasses.asdict(cfg)})
    (run_dir / "retrieval.md").write_text(
        f"# Retrieval on the {kind} test split\n\n{bundle.name} ({pretrained}), {len(evals['test'])} images; "
        f"recall in %, chance R@1 = {100 / max(1, len(evals['test'])):.2f}%.\n\n{table}")
    writer.add_text("retrieval", table)
    writer.close()
    best_path = run_dir / "checkpoints" / "best.pt"
    print(f"{table}\ncheckpoint: {best_path}\nuse it: python experiments/zero_shot_clip.py --model {bundle.name} "
          f"--pretrained {best_path}", flush=True)
    return {"run_dir": run_dir, "results": results, "best_epoch": best_epoch, "checkpoint": best_path,
            "arch": bundle.name}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
