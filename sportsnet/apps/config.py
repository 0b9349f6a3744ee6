"""What the applications share: config dataclass -> command-line flags, logging, devices, run folders,
and resuming a run with its saved config.

Flags are generated from the dataclass fields (``--phase2-lr-factor`` for ``phase2_lr_factor``),
with help text and choices taken from each field's metadata, so a config has one definition.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch

from ..engine.checkpoint import load_checkpoint
from ..engine.distributed import init_from_env, is_main
from ..engine.fit import TrainingInterrupted
from ..engine.loop import NonFiniteLossError
from ..hardware import PRECISIONS, pick_device
from ..serialization import WeightsFileError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The values a numeric flag accepts, from a spec such as ``">0"``, ``">=-1"`` or ``"[0,1)"``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def parse(cls, spec: str) -> "Bounds":
        spec = spec.replace(" ", "")
        for op, open_ in ((">=", False), (">", True)):
            if spec.startswith(op):
                return cls(low=float(spec[len(op):]), low_open=open_)
        if spec[:1] in "[(" and spec[-1:] in "])" and "," in spec:
            low, high = spec[1:-1].split(",")
            return cls(float(low), float(high), spec[0] == "(", spec[-1] == ")")
        raise ValueError(f"bounds {spec!r}: expected '>X', '>=X' or an interval such as '[0,1)'")

    def __contains__(self, value: float) -> bool:
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        fmt = "{:g}".format
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        return f"in {'(' if self.low_open else '['}{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}"


#: ``applies=(FIELD, ANY)``: the flag applies when FIELD is set (non-empty, true).
ANY = "any"


def option(default: Any, help: str, choices: Sequence[Any] | None = None, *, switch: bool = False,
           bounds: str | None = None, applies: tuple[str, Any] | None = None) -> Any:
    """A dataclass field with command-line help (and optional choices). ``switch``: an on/off flag
    whose default is ``None`` ("auto": decided at run time), given as ``--name`` / ``--no-name``.
    ``bounds``: the numbers accepted (:class:`Bounds`; checked when the flags are parsed). ``applies``:
    ``(field, values)``, the flag has an effect only while that field holds one of ``values`` (or, with
    :data:`ANY`, is set); giving it otherwise is refused by :func:`refuse_inapplicable`."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "switch": switch,
        "bounds": Bounds.parse(bounds) if bounds else None, "applies": applies})


def only_when(inherited: dataclasses.Field, applies: tuple[str, Any], why: str) -> Any:
    """A subclass's copy of an ``inherited`` option (the same default, help, bounds) that applies only when
    ``applies`` holds; ``why`` prefixes its help."""
    return dataclasses.field(default=inherited.default, metadata={
        **inherited.metadata, "help": f"{why}: {inherited.metadata['help']}", "applies": applies})


def precision_option() -> Any:
    """The ``--precision`` flag every script shares (``auto`` is decided by :mod:`sportsnet.hardware`)."""
    return option("auto", "autocast precision; auto: bf16 where this hardware runs it natively, else fp32 on a "
                          "CPU and fp16 (with the gradient scaler) on a GPU; the choice is logged with its reason",
                  ("auto",) + PRECISIONS)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (``<prog>: error: argument --lr: invalid float value: 'x'``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def build_parser(cls: type, defaults: Any, description: str = "") -> argparse.ArgumentParser:
    """Flags for every field of ``cls``; defaults shown from ``defaults`` but not filled in, so
    :func:`parse_config` can tell which flags were given."""
    p = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                       argument_default=argparse.SUPPRESS, allow_abbrev=False)
    for f in dataclasses.fields(cls):
        meta, default = f.metadata, getattr(defaults, f.name)
        accepted = f"; {meta['bounds']}" if meta.get("bounds") else ""
        help_text = f"{meta.get('help', '')} (default: {'auto' if default is None else repr(default)}{accepted})"
        if isinstance(default, bool) or meta.get("switch"):
            p.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(flag_name(f.name), type=type(default), choices=meta.get("choices"), help=help_text,
                           metavar=None if meta.get("choices") else f.name.upper())
    return p


def flag_message(error: Exception) -> str:
    """A library error about a keyword argument in the words of its flag: ``"num_classes=1 must be ..."`` ->
    ``"--num-classes 1 must be ..."`` (other messages unchanged)."""
    return re.sub(r"^(\w+)=", lambda m: f"{flag_name(m[1])} ", str(error))


def out_of_bounds(cfg: Any) -> list[str]:
    """One problem per field of ``cfg`` whose value is outside its :class:`Bounds` (NaN never is inside)."""
    problems = []
    for f in dataclasses.fields(cfg):
        bounds, value = f.metadata.get("bounds"), getattr(cfg, f.name)
        if bounds is not None and value not in bounds:
            problems.append(f"{flag_name(f.name)} {value:g}: must be {bounds}")
    return problems


def parse_config(cls: type[T], argv: Sequence[str] | None, defaults: T, description: str = "") -> tuple[T, set[str]]:
    """Parse ``argv`` into ``cls`` on top of ``defaults``; also return the names given explicitly. A value out
    of its bounds is a one-line exit naming every such flag, before any work."""
    ns = vars(build_parser(cls, defaults, description).parse_args(argv))
    cfg = dataclasses.replace(defaults, **ns)
    problems = out_of_bounds(cfg)
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    return cfg, set(ns)


def _holds(value: Any, values: Any) -> bool:
    return bool(value) if values == ANY else value in values


def refuse_inapplicable(cfg: Any, given: set[str]) -> None:
    """A one-line exit for each flag in ``given`` that has no effect on ``cfg`` (its ``applies`` condition
    does not hold), naming the condition and the flags of the same kind that do apply."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    problems = []
    for name in sorted(given):
        applies = fields[name].metadata.get("applies") if name in fields else None
        if applies is None or _holds(getattr(cfg, applies[0]), applies[1]):
            continue
        key, values = applies
        current = getattr(cfg, key)
        if values == ANY or isinstance(current, bool):
            problems.append(f"{flag_name(name)} has no effect without {flag_name(key)}")
            continue
        instead = [flag_name(f.name) for f in fields.values() if (f.metadata.get("applies") or ("",))[0] == key
                   and _holds(current, f.metadata["applies"][1])]
        problems.append(f"{flag_name(name)} has no effect with {flag_name(key)} {current} (it applies with "
                        f"{' or '.join(f'{flag_name(key)} {v}' for v in values)})"
                        + (f"; with {flag_name(key)} {current} use {', '.join(instead)}" if instead else ""))
    if problems:
        raise SystemExit("error: " + "; ".join(problems))


def _quiet_chatty_libraries(record: logging.LogRecord) -> bool:
    """open_clip logs each step of building a model at INFO on the root logger; keep its warnings."""
    return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        if _quiet_chatty_libraries not in handler.filters:
            handler.addFilter(_quiet_chatty_libraries)


def device_from_flag(name: str) -> torch.device:
    """``--device``: :func:`sportsnet.hardware.pick_device`, with a bad name a one-line exit."""
    try:
        return pick_device(name)
    except ValueError as e:
        raise SystemExit(f"error: --device: {e}") from None


def training_device(name: str) -> torch.device:
    """``--device`` of a training script: under torchrun this rank's device (and the process group
    started), else :func:`device_from_flag`."""
    return init_from_env(name) or device_from_flag(name)


def saved_config(cls: type[T], saved: dict[str, Any]) -> T:
    """The ``cls`` config stored in a checkpoint or config.json (options this version does not know are
    dropped with a warning)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(saved) - known)
    if unknown:
        log.warning("ignoring options this version does not know from the saved config: %s", unknown)
    return cls(**{k: v for k, v in saved.items() if k in known})


def checkpoint_path(run: str | os.PathLike, name: str = "last.pt") -> Path:
    """A run folder -> its ``checkpoints/<name>``; a file -> itself."""
    path = Path(run)
    return path / "checkpoints" / name if path.is_dir() else path


def run_folder(resume: str | os.PathLike) -> Path:
    """The run folder of ``--resume`` (a run folder, or a checkpoint inside its ``checkpoints/``)."""
    path = Path(resume)
    return path if path.is_dir() else path.parent.parent


def resume_config(cls: type[T], cfg: T, given: set[str], runtime_flags: set[str]) -> tuple[T, dict[str, Any]]:
    """``--resume``: the run's ``last.pt`` and its saved config, with only ``runtime_flags`` (workers,
    device, ...) taken from the command line; any other flag given is a one-line exit naming it."""
    fixed = sorted(given - runtime_flags)
    if fixed:
        raise SystemExit(f"error: --resume continues with the run's saved config; drop "
                         f"{', '.join(flag_name(f) for f in fixed)} (only "
                         f"{', '.join(sorted(flag_name(f) for f in runtime_flags))} may change)")
    try:
        ckpt = load_checkpoint(checkpoint_path(cfg.resume))
    except (FileNotFoundError, WeightsFileError) as e:
        raise SystemExit(f"error: --resume {cfg.resume}: {e}") from None
    runtime = {k: getattr(cfg, k) for k in given & runtime_flags}
    return dataclasses.replace(saved_config(cls, ckpt["config"]), **runtime), ckpt


@contextmanager
def fit_exits(script: str, run_dir: Path, writer=None):
    """Around :func:`sportsnet.engine.fit` in a script: a SIGTERM/SIGINT stop prints how to continue
    (rank 0) and exits with 128 + the signal; a NaN/inf loss exits with its one-line error."""
    try:
        yield
    except TrainingInterrupted as e:
        if writer is not None:
            writer.close()
        if is_main():
            print(f"{e}\ncontinue with: python experiments/{script}.py --resume {run_dir}", flush=True)
        raise SystemExit(128 + e.signum) from None
    except NonFiniteLossError as e:
        if writer is not None:
            writer.close()
        raise SystemExit(f"error: {e}") from None


def new_run_dir(out: str, name: str) -> Path:
    run_dir = Path(out) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: run folder {run_dir} already exists; pass --resume {run_dir} to continue it, "
                         f"or another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def config_markdown(cfg: Any) -> str:
    rows = "\n".join(f"| {k} | `{v}` |" for k, v in dataclasses.asdict(cfg).items())
    return f"| option | value |\n|---|---|\n{rows}"
