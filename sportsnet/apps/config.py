"""Shared by the experiment scripts: config dataclass -> command-line flags, logging, devices, run folders.

Flags are generated from the dataclass fields (``--phase2-lr-factor`` for ``phase2_lr_factor``),
with help text and choices taken from each field's metadata, so a config has one definition.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch

from sportsnet.hardware import PRECISIONS

T = TypeVar("T")


def option(default: Any, help: str, choices: Sequence[Any] | None = None, *, switch: bool = False) -> Any:
    """A dataclass field with command-line help (and optional choices). ``switch``: an on/off flag
    whose default is ``None`` ("auto": decided at run time), given as ``--name`` / ``--no-name``."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "switch": switch})


def precision_option() -> Any:
    """The ``--precision`` flag every script shares (``auto`` is decided by :mod:`sportsnet.hardware`)."""
    return option("auto", "autocast precision; auto: bf16 where this hardware runs it natively, else fp32 on a "
                          "CPU and fp16 (with the gradient scaler) on a GPU; the choice is logged with its reason",
                  ("auto",) + PRECISIONS)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def build_parser(cls: type, defaults: Any, description: str = "") -> argparse.ArgumentParser:
    """Flags for every field of ``cls``; defaults shown from ``defaults`` but not filled in, so
    :func:`parse_config` can tell which flags were given."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS, allow_abbrev=False)
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, getattr(defaults, f.name)
        help_text = f"{meta.get('help', '')} (default: {'auto' if default is None else repr(default)})"
        if isinstance(default, bool) or meta.get("switch"):
            p.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag_name(f.name), type=type(default), choices=meta.get("choices"), help=help_text,
                           metavar=None if meta.get("choices") else f.name.upper())
    return p


def parse_config(cls: type[T], argv: Sequence[str] | None, defaults: T, description: str = "") -> tuple[T, set[str]]:
    """Parse ``argv`` into ``cls`` on top of ``defaults``; also return the names given explicitly."""
    ns = vars(build_parser(cls, defaults, description).parse_args(argv))
    return dataclasses.replace(defaults, **ns), set(ns)


def _quiet_chatty_libraries(record: logging.LogRecord) -> bool:
    """open_clip logs each step of building a model at INFO on the root logger; keep its warnings."""
    return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if _quiet_chatty_libraries not in handler.filters:
            handler.addFilter(_quiet_chatty_libraries)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} but CUDA is not available here (torch {torch.__version__})")
    return device


def new_run_dir(out: str, name: str) -> Path:
    run_dir = Path(out) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: run folder {run_dir} already exists; pass --resume {run_dir} to continue it, "
                         f"or another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def config_markdown(cfg: Any) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in dataclasses.asdict(cfg).items())
    return f"| option | value |\n|---|---|\n{rows}"
