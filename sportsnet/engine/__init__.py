"""Training and evaluation: loops, optimizers and schedules, checkpoints, reports, and ``fit``.

Knows nothing of VGG vs CLIP: it takes a model, a loss and loaders.
"""
from .checkpoint import (CheckpointWriteError, capture_rng_state, describe_mismatch, load_checkpoint, rank_rng_restorer,
                         rank_rng_states, restore_rng_state, save_checkpoint)
from .fit import FitOptions, FitResult, Phase, TrainingInterrupted, fit
from .loop import PRECISIONS, EvalResult, NonFiniteLossError, TrainStats, amp_dtype, evaluate, train_one_epoch
from .optim import build_optimizer, warmup_cosine
from .report import confusion_figure, per_class_figure, summarize, write_report

__all__ = [
    "CheckpointWriteError", "EvalResult", "FitOptions", "FitResult", "NonFiniteLossError", "PRECISIONS", "Phase",
    "TrainStats", "TrainingInterrupted", "amp_dtype", "build_optimizer", "capture_rng_state", "confusion_figure",
    "describe_mismatch", "evaluate", "fit", "load_checkpoint", "per_class_figure", "rank_rng_restorer",
    "rank_rng_states", "restore_rng_state", "save_checkpoint", "summarize", "train_one_epoch", "warmup_cosine",
    "write_report",
]
