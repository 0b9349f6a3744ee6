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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from ..data import Captions, make_synthetic_sports, summarize_skipped
from ..engine import FitOptions, Phase, capture_rng_state, fit, load_checkpoint, restore_rng_state
from ..engine.contrastive import ContrastiveStep, encode_retrieval_set, retrieval_metrics
from ..engine.distributed import barrier, broadcast_object, shutdown, world
from ..engine.fit import Validation
from ..hardware import resolve_precision
from ..models.clip import load_clip
from ..serialization import WeightsFileError, write_json, write_text
from .clip_data import SYNTHETIC_CLIP, SYNTHETIC_DEFAULTS
from .config import (
    config_markdown,
    fit_exits,
    new_run_dir,
    option,
    parse_config,
    precision_option,
    refuse_inapplicable,
    resume_config,
    run_folder,
    setup_logging,
    timestamp,
    training_device,
)

log = logging.getLogger("pretrain_clip")
RUNTIME_FLAGS = {"resume", "workers", "progress", "device", "log_every"}
DEFAULT_FLICKR = "data/flickr8k"


@dataclass
class PretrainConfig:
    data: str = option("", "Flickr8k folder (either layout) or 'synthetic'; empty: data/flickr8k if present")
    model: str = option("ViT-B-32", "open_clip architecture")
    pretrained: str = option("openai", "start from a pretrained tag, a local weights file, or 'none' (from scratch)")
    lock_image: bool = option(False, "freeze the image tower (LiT-style: only the text tower learns)")
    unlocked_image_groups: int = option(0, "with --lock-image: leave this many last layer groups trainable",
                                        bounds=">=0", applies=("lock_image", (True,)))
    lock_text: bool = option(False, "freeze the text tower")
    epochs: int = option(5, "passes over the train split", bounds=">=1")
    batch_size: int = option(64, "pairs per micro-batch and process", bounds=">=1")
    accum_steps: int = option(1, "micro-batches per optimizer step (exact: the loss sees all of them)", bounds=">=1")
    lr: float = option(1e-5, "peak learning rate (fine-tuning; from scratch use ~5e-4)", bounds=">0")
    weight_decay: float = option(0.1, "AdamW weight decay of matrices (not of biases, norms, temperature)",
                                 bounds=">=0")
    warmup_steps: int = option(50, "linear warmup steps before cosine decay", bounds=">=0")
    grad_clip: float = option(0.0, "clip the gradient norm (0: off)", bounds=">=0")
    precision: str = precision_option()
    seed: int = option(0, "seed of initialisation, shuffling and caption choice")
    workers: int = option(2, "data-loader workers", bounds=">=0")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (under torchrun: cuda:LOCAL_RANK)")
    out: str = option("runs", "folder for run folders")
    name: str = option("", "run folder name (default: pretrain-<model>-<weights>-<data>-<time>)")
    log_every: int = option(20, "optimizer steps between logged losses", bounds=">=1")
    progress: bool = option(True, "progress bars")
    resume: str = option("", "run folder (or its last.pt) to continue with its saved config")
    synthetic_size: int = option(SYNTHETIC_DEFAULTS["size"], "synthetic set: image side in pixels",
                                 bounds=">=32", applies=("data", ("synthetic",)))


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


def param_groups(model: torch.nn.Module, weight_decay: float) -> dict[str, dict]:
    """Decay matrices only; biases, norm gains, embeddings' scalars and the temperature are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return {"decay": {"params": decay, "weight_decay": weight_decay},
            "no_decay": {"params": no_decay, "weight_decay": 0.0}}


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
        cfg, ckpt = resume_config(PretrainConfig, cfg, given, RUNTIME_FLAGS)
    if cfg.lock_image and cfg.lock_text:
        raise SystemExit("error: --lock-image and --lock-text together leave nothing to train but the temperature")
    kind, root = resolve_captions(cfg.data)
    refuse_inapplicable(dataclasses.replace(cfg, data=kind if kind == "synthetic" else str(root)), given)
    device = training_device(cfg.device)
    try:
        return _run(cfg, kind, root, device, ckpt)
    finally:
        shutdown()


def _run(cfg: PretrainConfig, kind: str, root: Path, device: torch.device, ckpt: dict | None = None) -> dict:
    rank, size = world()
    precision = resolve_precision(cfg.precision, device)
    cfg = dataclasses.replace(cfg, precision=precision)  # checkpoints record what auto chose, for resumes
    if kind == "synthetic" and rank == 0:
        make_synthetic_sports(root, **{**SYNTHETIC_DEFAULTS, "size": cfg.synthetic_size})
    barrier()
    torch.manual_seed(cfg.seed)
    try:  # a resumed run gets its weights from the checkpoint, not from the (maybe unreachable) tag
        bundle = load_clip(ckpt["arch"] if ckpt else cfg.model, "none" if ckpt else cfg.pretrained, device=device)
    except (FileNotFoundError, ValueError, WeightsFileError) as e:
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
    # One loader batch is one optimizer step of this process (ContrastiveStep splits it into the
    # accum-steps micro-batches). Workers are started per epoch (not persistent), seeded from the
    # loader's generator, which fit() reseeds per rank and epoch: ranks augment apart, and a resumed
    # run augments as an uninterrupted one.
    loader = DataLoader(train, batch_size=cfg.batch_size * cfg.accum_steps, shuffle=sampler is None, sampler=sampler,
                        drop_last=True, num_workers=cfg.workers, collate_fn=collate, generator=torch.Generator(),
                        pin_memory=device.type == "cuda")

    def score(split: str) -> dict[str, float]:
        ds = evals[split]
        # Its own generator: worker seeds are not drawn from the training stream.
        images = (x for x, _ in DataLoader(ds, batch_size=cfg.batch_size, num_workers=cfg.workers,
                                           generator=torch.Generator().manual_seed(0)))
        img, txt, text_image = encode_retrieval_set(model, images, ds.captions, tokenizer, device=device,
                                                    precision=precision)
        return retrieval_metrics(img, txt, text_image)

    pretrained = ckpt["pretrained"] if ckpt else bundle.pretrained
    if ckpt:
        run_dir = run_folder(cfg.resume)
    else:
        name = broadcast_object(cfg.name or f"pretrain-{bundle.name}-{Path(pretrained).stem}-{kind}-{timestamp()}")
        run_dir = new_run_dir(cfg.out, name) if rank == 0 else Path(cfg.out) / name
    writer = None
    results: dict[str, dict] = dict(ckpt["results"]) if ckpt else {}
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
    log.info("%s (%s): %d trainable parameters; %d train pairs, %d steps/epoch of %d pairs, precision %s, "
             "%d process(es)",
             bundle.name, pretrained, trainable, len(train), len(loader), per_step, precision, size)

    phases = [Phase("pretrain", cfg.epochs, cfg.lr, param_groups(model, cfg.weight_decay))]
    options = FitOptions(precision=precision, channels_last=False, grad_clip=cfg.grad_clip, optimizer="adamw",
                         weight_decay=cfg.weight_decay, betas=(0.9, 0.98), eps=1e-6, warmup_steps=cfg.warmup_steps,
                         log_every=cfg.log_every, seed=cfg.seed, progress=cfg.progress, best_metric="mean_recall")
    meta = {"arch": bundle.name, "pretrained": pretrained, "results": results}
    with fit_exits("pretrain_clip", run_dir, writer):
        result = fit(model, phases, loader, device=device, run_dir=run_dir, options=options,
                     config={**dataclasses.asdict(cfg), "resume": ""}, writer=writer, resume=ckpt,
                     step=ContrastiveStep(cfg.accum_steps), validate=lambda _: Validation(score("valid")), meta=meta)
    if rank != 0:
        return {}
    best_path = result.best_checkpoint
    model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    key = f"test, best (epoch {result.best_epoch})"
    results[key] = score("test")
    for k, v in results[key].items():
        writer.add_scalar(f"test/{k}", v, result.best_epoch)
    table = retrieval_table(results)
    chance = {"image->text R@1": 1 / max(1, len(evals["test"])), "test images": len(evals["test"])}
    write_json(run_dir / "retrieval.json", {"model": bundle.name, "pretrained": pretrained, "data": kind,
                                            "results": results, "best_epoch": result.best_epoch, "chance": chance,
                                            "skipped": skipped, "config": dataclasses.asdict(cfg)})
    write_text(run_dir / "retrieval.md",
               f"# Retrieval on the {kind} test split\n\n{bundle.name} ({pretrained}), {len(evals['test'])} images; "
               f"recall in %, chance R@1 = {100 / max(1, len(evals['test'])):.2f}%.\n\n{table}")
    writer.add_text("retrieval", table)
    writer.close()
    print(f"{table}\ncheckpoint: {best_path}\nuse it: python experiments/zero_shot_clip.py --model {bundle.name} "
          f"--pretrained {best_path}", flush=True)
    return {"run_dir": run_dir, "results": results, "best_epoch": result.best_epoch, "checkpoint": best_path,
            "arch": bundle.name}


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
