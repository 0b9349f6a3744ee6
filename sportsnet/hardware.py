"""What this machine can do, and the defaults chosen from it: one home for every hardware decision.

The probes run once per process (cached) and are plain data, so every decision can be tested with
any hardware answer (:class:`CpuInfo` / :class:`GpuInfo` are injectable):

* **Precision** (``auto``). CPU: bf16 autocast only where the CPU runs bf16 natively (bf16
  instructions, AVX512_BF16 or AMX-BF16 on x86, BF16 on Arm, *and* oneDNN willing to use them), else
  fp32: oneDNN *emulates* bf16 elsewhere (any AVX-512 CPU passes its own probe), and a VGG training
  step then runs several times slower than in fp32 (``benchmarks/bench_train.py`` measures both).
  CUDA: bf16 on GPUs with native bf16 (compute capability 8.0+, Ampere and later); else fp16 with the
  gradient scaler where fp16 is fast (tensor cores, 7.0+, and the P100's 6.0/6.2); else fp32 (a GTX 10xx
  or P40 runs fp16 at a small fraction of its fp32 rate). ``torch.cuda.is_bf16_supported()`` alone
  also counts emulated bf16 on older GPUs, so the capability decides.
* **Channels-last** (``auto``). CUDA: on tensor-core GPUs (compute capability 7.0+), whose conv kernels
  want NHWC. CPU: wherever oneDNN runs the convolutions: ``bench_train.py``'s VGG19 training step runs
  faster channels-last than NCHW both on an AVX2-only CPU in fp32 and on an AVX-512 CPU with native
  bf16 (benchmarks/README.md has the tables of both). Narrow BatchNorm nets can be the exception: the
  offline demo's width-1/8 VGG19-BN trains faster in NCHW on both, so the demo asks for NCHW.

Every decision comes with its reason, which the scripts log in one line
(``precision auto -> fp32: this CPU has no native bf16 (AVX2)``). :func:`describe` is what benchmark
results record about the machine that produced them.

The precision a run asked for becomes one autocast context and one gradient scaler everywhere
(:func:`autocast`, :func:`make_grad_scaler`), and ``--device auto`` one device (:func:`pick_device`).

To try the no-native-bf16 path on a CPU that has it: ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``
caps both oneDNN and ATen at AVX2, and the probe then answers as an AVX2-only CPU does.
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
# Environment variables that change what the probes answer; recorded beside every measurement.
ISA_OVERRIDES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as torch sees it."""

    model: str  # e.g. "AMD EPYC 7B13"
    isa: str  # ATen's vector ISA level: torch.backends.cpu.get_cpu_capability() ("AVX2", "AVX512", ...)
    native_bf16: bool  # bf16 matmuls/convs run natively (AVX-512-BF16, AMX, or Arm BF16), not emulated
    bf16_probe: str  # what said so: "oneDNN and CPU flags", or "CPU flags" where torch has no oneDNN
    onednn: bool  # torch has oneDNN (mkldnn): the fast CPU conv kernels, channels-last included
    threads: int  # torch's intra-op threads

    @property
    def label(self) -> str:
        """``AVX2``, or ``AVX512 + native bf16``: the host class in a few words."""
        return f"{self.isa}{' + native bf16' if self.native_bf16 else ', no native bf16'}"


@dataclass(frozen=True)
class GpuInfo:
    name: str  # e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int]  # (major, minor)

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"

    @property
    def native_bf16(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def tensor_cores(self) -> bool:
        return self.capability >= (7, 0)

    @property
    def fast_fp16(self) -> bool:
        """fp16 at least as fast as fp32: tensor cores, or the P100 / Jetson TX2 (6.0, 6.2). The other
        6.x GPUs (GTX 10xx, P4, P40) run fp16 at a small fraction of their fp32 rate."""
        return self.tensor_cores or self.capability in ((6, 0), (6, 2))


@dataclass(frozen=True)
class Choice:
    """A default chosen from the hardware: ``value`` and the reason, for one log line."""

    name: str  # "precision" or "channels-last"
    requested: Any  # what the user asked for ("auto", "fp32", None for auto, True, ...)
    value: Any
    reason: str

    def __str__(self) -> str:
        shown = {True: "on", False: "off"}.get(self.value, self.value) if isinstance(self.value, bool) else self.value
        asked = "auto" if self.requested in ("auto", None) else "requested"
        return f"{self.name} {asked} -> {shown}: {self.reason}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_bf16() -> bool | None:
    """oneDNN's answer (it honours ONEDNN_MAX_CPU_ISA), or None where this torch lacks the probe. It
    says yes for any AVX-512 CPU, where oneDNN can *emulate* bf16: on its own it does not mean native."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def _bf16_instructions(flags: set[str]) -> bool | None:
    """Whether the CPU has bf16 arithmetic: x86's AVX512_BF16 or AMX-BF16, Arm's BF16; None when
    nothing can tell (no /proc/cpuinfo and an old torch)."""
    if flags:
        return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    answers = [bool(check()) for check in checks if check is not None]
    return any(answers) if answers else None


def native_bf16(onednn: bool | None, instructions: bool | None) -> tuple[bool, str]:
    """``(native, what said so)``: bf16 is native when the CPU has bf16 instructions and oneDNN, which
    runs the convolutions, will use them (not under an ISA cap). Unknown counts as no: emulated bf16
    is far slower than fp32, a wrong fp32 only a little slower than bf16."""
    if onednn is None:
        return bool(instructions), "CPU flags"
    if instructions is None:
        return False, "oneDNN, CPU flags unknown"
    return onednn and instructions, "oneDNN and CPU flags"


# oneDNN ISA levels (ONEDNN_MAX_CPU_ISA values) at which it still uses bf16 instructions.
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}


def _onednn_capped_below_bf16() -> bool:
    """An ONEDNN_MAX_CPU_ISA (or DNNL_) cap under which oneDNN does not use bf16 instructions, such as
    AVX512_CORE (its own probe still says yes there: it emulates)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return bool(cap) and cap.strip().upper() not in _ONEDNN_BF16_ISAS


@functools.lru_cache(maxsize=None)
def probe_cpu() -> CpuInfo:
    """This process's CPU (probed once)."""
    instructions = _bf16_instructions(_cpu_flags())
    if instructions and _onednn_capped_below_bf16():
        instructions = False
    native, source = native_bf16(_onednn_bf16(), instructions)
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        isa = "unknown"
    return CpuInfo(_cpu_model(), isa, native, source, torch.backends.mkldnn.is_available(), torch.get_num_threads())


def probe_gpu(device: torch.device | str | int | None = None) -> GpuInfo:
    """The CUDA device's name and compute capability."""
    return GpuInfo(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def choose_precision(requested: str, device: torch.device | str, *, cpu: CpuInfo | None = None,
                     gpu: GpuInfo | None = None) -> Choice:
    """``requested`` (``auto`` or one of :data:`PRECISIONS`) -> the precision to train/run with.

    ``cpu`` / ``gpu`` default to the probes of this machine (pass them to decide for another).
    """
    if requested != "auto" and requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r} is not one of {('auto',) + PRECISIONS}")
    device = _device(device)
    if device.type == "cuda":
        gpu = gpu or probe_gpu(device)
        where = f"{gpu.name} ({gpu.sm})"
        if requested == "auto":
            if gpu.native_bf16:
                return Choice("precision", requested, "bf16", f"{where} has native bf16")
            if gpu.fast_fp16:
                return Choice("precision", requested, "fp16",
                              f"{where} has no native bf16: fp16 with the gradient scaler")
            return Choice("precision", requested, "fp32", f"{where} has neither native bf16 nor fast fp16")
        slow = (requested == "bf16" and not gpu.native_bf16) or (requested == "fp16" and not gpu.fast_fp16)
        note = " (slow on this GPU)" if slow else ""
        return Choice("precision", requested, requested, f"as requested on {where}{note}")
    if device.type == "cpu":
        cpu = cpu or probe_cpu()
        if requested == "auto":
            if cpu.native_bf16:
                return Choice("precision", requested, "bf16", f"this CPU has native bf16 ({cpu.isa}, {cpu.bf16_probe})")
            return Choice("precision", requested, "fp32", f"this CPU has no native bf16 ({cpu.isa}; "
                                                          "emulated bf16 is several times slower than fp32)")
        note = ""
        if requested == "bf16" and not cpu.native_bf16:
            note = f"; this CPU has no native bf16 ({cpu.isa}): emulated, several times slower than fp32"
        elif requested == "fp16":
            note = "; fp16 autocast on a CPU is rarely faster than fp32"
        return Choice("precision", requested, requested, f"as requested on the CPU{note}")
    if requested == "auto":
        return Choice("precision", requested, "fp32", f"no automatic choice for {device.type} devices")
    return Choice("precision", requested, requested, f"as requested on {device.type}")


def choose_channels_last(requested: bool | None, device: torch.device | str, *, cpu: CpuInfo | None = None,
                         gpu: GpuInfo | None = None) -> Choice:
    """``requested`` (``None`` = auto, or an explicit bool) -> whether to run conv nets channels-last."""
    device = _device(device)
    if requested is not None:
        return Choice("channels-last", requested, bool(requested), "as requested")
    if device.type == "cuda":
        gpu = gpu or probe_gpu(device)
        if gpu.tensor_cores:
            return Choice("channels-last", None, True, f"{gpu.name} ({gpu.sm}) has tensor cores, whose conv "
                                                      "kernels want NHWC")
        return Choice("channels-last", None, False, f"{gpu.name} ({gpu.sm}) has no tensor cores")
    if device.type == "cpu":
        cpu = cpu or probe_cpu()
        if cpu.onednn:
            return Choice("channels-last", None, True, f"oneDNN's conv kernels are faster on NHWC on this CPU's "
                                                      f"class ({cpu.isa})")
        return Choice("channels-last", None, False, "this torch has no oneDNN, whose kernels make NHWC fast on a CPU")
    return Choice("channels-last", None, False, f"no automatic choice for {device.type} devices")


_logged: set[Choice] = set()


def _log_once(choice: Choice) -> None:
    """One line per decision and process (a script that runs another's steps decides again, silently),
    from the first rank only under torchrun."""
    if choice not in _logged:
        _logged.add(choice)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
                torch.distributed.get_rank() == 0:
            log.info("%s", choice)


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """:func:`choose_precision` for this machine, logged in one line; returns the precision."""
    choice = choose_precision(requested, device)
    _log_once(choice)
    return choice.value


def resolve_channels_last(requested: bool | None, device: torch.device | str) -> bool:
    """:func:`choose_channels_last` for this machine, logged in one line; returns the decision."""
    choice = choose_channels_last(requested, device)
    _log_once(choice)
    return choice.value


def describe(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The hardware behind a measurement: CPU model, ISA level, native bf16, threads and any ISA
    override in the environment; for CUDA also the GPU's name and compute capability."""
    cpu = probe_cpu()
    out: dict[str, Any] = {"cpu": asdict(cpu), "cpu_label": cpu.label}
    out["cpu"]["threads"] = torch.get_num_threads()  # may have been set after the probe
    overrides = {k: os.environ[k] for k in ISA_OVERRIDES if k in os.environ}
    if overrides:
        out["isa_overrides"] = overrides
    device = _device(device)
    if device.type == "cuda":
        gpu = probe_gpu(device)
        out["gpu"] = {"name": gpu.name, "capability": f"{gpu.capability[0]}.{gpu.capability[1]}",
                      "native_bf16": gpu.native_bf16}
    return out


def hardware_line(info: dict[str, Any]) -> str:
    """One line for a table caption, from :func:`describe`'s dict."""
    cpu = info["cpu"]
    text = (f"{cpu['model']}, {cpu['threads']} threads, {cpu['isa']},"
            f" native bf16 {'yes' if cpu['native_bf16'] else 'no'}")
    if info.get("isa_overrides"):
        text += " (capped by " + " ".join(f"{k}={v}" for k, v in info["isa_overrides"].items()) + ")"
    if "gpu" in info:
        text = f"{info['gpu']['name']} (compute capability {info['gpu']['capability']}); host CPU {text}"
    return text


def pick_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` where CUDA is available, else ``cpu``; any other name as given (``cpu``, ``cuda:1``).
    ValueError for a CUDA device on a machine without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a device name (expected cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} but CUDA is not available here (torch {torch.__version__})")
    return device


def amp_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None`` for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``precision`` on ``device``'s type; disabled (a no-op) for fp32."""
    dtype = amp_dtype(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A scaler that does something only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(precision) == torch.float16)
