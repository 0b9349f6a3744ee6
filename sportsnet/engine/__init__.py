"""Training and evaluation: loops, optimizers and schedules, checkpoints, reports, and ``fit``.

Knows nothing of VGG vs CLIP: it takes a model, loaders and a training step (supervised classification in
``loop``, contrastive image-text in ``contrastive``); ``fit`` is the run lifecycle of every training program.
"""
from .checkpoint import (
    CheckpointWriteError,
    capture_rng_state,
    describe_mismatch,
    load_checkpoint,
    rank_rng_restorer,
    rank_rng_states,
    restore_rng_state,
    save_checkpoint,
)
from .fit import FitOptions, FitResult, Phase, TrainingInterrupted, Validation, classification_validator, fit
from .loop import (
    EvalResult,
    NonFiniteLossError,
    StepLog,
    SupervisedStep,
    TrainStats,
    TrainStep,
    evaluate,
    run_epoch,
    train_one_epoch,
)
from .optim import build_optimizer, warmup_cosine
from .report import confusion_figure, per_class_figure, summarize, write_report

__all__ = [
    "CheckpointWriteError", "EvalResult", "FitOptions", "FitResult", "NonFiniteLossError", "Phase", "StepLog",
    "SupervisedStep", "TrainStats", "TrainStep", "TrainingInterrupted", "Validation", "build_optimizer",
    "capture_rng_state", "classification_validator", "confusion_figure", "describe_mismatch", "evaluate", "fit",
    "load_checkpoint", "per_class_figure", "rank_rng_restorer", "rank_rng_states", "restore_rng_state",
    "run_epoch", "save_checkpoint", "summarize", "train_one_epoch", "warmup_cosine", "write_report",
]
