"""``fused_gradcam`` and ``fused_weighted_cam``: the compiled operators when available, else the
pure-PyTorch references.

The backend is decided once, on first use, and logged once:

1. the prebuilt extension ``sportsnet._C`` (built by setup.py);
2. otherwise csrc/ compiled just in time with ``torch.utils.cpp_extension.load`` (ninja; cached in
   torch's extensions folder), when this is a source checkout and a C++ compiler works (checked first:
   without one it is not attempted); ``SPORTSNET_JIT_CFLAGS`` adds C++ flags after ours (``-O1``: about half
   the compile time, slower kernels);
3. otherwise the reference, with one warning that says why (for an install without the library, the
   reason setup.py recorded, e.g. no compiler). ``SPORTSNET_REQUIRE_EXT=1`` makes that an error
   (for benchmarks and CI jobs that must exercise the compiled op).

The dispatcher ops are ``torch.ops.sportsnet.fused_gradcam`` and ``torch.ops.sportsnet.fused_weighted_cam``
(each with ``.out``, which writes into ``out`` and returns nothing); they pick the CPU or CUDA kernel by
device. They exist once the backend is loaded: call :func:`backend` (or ``import sportsnet._C``) before
using ``torch.ops`` directly. Fake kernels are registered so ``torch.compile(fullgraph=True)`` can trace
them. Which devices have kernels is recorded per op: a library built before ``fused_weighted_cam``
existed still serves ``fused_gradcam``, and ``fused_weighted_cam`` then takes the reference.
"""
from __future__ import annotations

import logging
import os
import shlex
import threading
import warnings
from pathlib import Path
from typing import Sequence

import torch

from . import _build
from .reference import check_inputs, check_weighted_inputs, gradcam_reference, output_dtype, weighted_cam_reference

log = logging.getLogger(__name__)
_NAMESPACE = "sportsnet"
_GRADCAM = "fused_gradcam"
_WEIGHTED = "fused_weighted_cam"
_OP = f"{_NAMESPACE}::{_GRADCAM}"
_lock = threading.Lock()
_BACKEND: str | None = None  # decided once by _load(); a plain global so torch.compile can read it
# Device types the loaded fused_gradcam has kernels for (set by _load). A build can lack CUDA (no nvcc at
# build time): CUDA inputs then take the reference, with one warning, instead of a dispatcher error.
_KERNEL_DEVICES: frozenset[str] = frozenset()
# The same for fused_weighted_cam (empty for a library built before that op existed).
_WEIGHTED_KERNEL_DEVICES: frozenset[str] = frozenset()
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}
_warned_devices: set[tuple[str, str]] = set()  # (op, device type) pairs warned about
# The GPU architectures the CUDA kernel was compiled for (a TORCH_CUDA_ARCH_LIST; set by _load): a GPU
# they do not cover takes the reference, with one warning, not "no kernel image is available". None:
# not recorded (a library built elsewhere), so every GPU is tried.
_CUDA_ARCHS: str | None = None
_covered: dict[tuple[int, int], bool] = {}


def has_kernel(dispatch_key: str, op: str = _GRADCAM) -> bool:
    """Whether ``sportsnet::<op>`` (``fused_gradcam`` or ``fused_weighted_cam``) has a kernel for
    ``dispatch_key`` ("CPU", "CUDA")."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{_NAMESPACE}::{op}", dispatch_key)
    except RuntimeError:  # the operator is not registered at all
        return False


def _kernel_devices(op: str) -> frozenset[str]:
    """Device types ``op`` has kernels for in the loaded library."""
    return frozenset(t for t, key in _DISPATCH_KEYS.items() if has_kernel(key, op))


def _registered() -> bool:
    return has_kernel("CPU")


class _CannotBuild(RuntimeError):
    """The just-in-time build is not possible here (no sources, no compiler): said in one phrase, no trace."""


def _jit_build() -> None:
    root = Path(__file__).resolve().parents[2]
    csrc = _build.csrc_dir(root)
    if not csrc.is_dir():
        raise _CannotBuild(f"only a source checkout can (no csrc/ beside the package: {csrc})")
    compiler = _build.find_cxx_compiler()  # up front: without one, cpp_extension fails with a long trace
    if compiler.command is None:
        raise _CannotBuild(compiler.problem)
    if not os.environ.get("CXX") and compiler.command != ["c++"]:
        os.environ["CXX"] = compiler.command[0]  # cpp_extension runs $CXX, else c++
    from torch.utils import cpp_extension  # after the checks: its import logs about CUDA_HOME on machines without GPU

    global _CUDA_ARCHS
    with_cuda = (torch.cuda.is_available() and torch.version.cuda is not None and _build.cuda_home() is not None
                 and not _build.cuda_build_disabled())
    if with_cuda and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = _build.cuda_home()
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    ninja = _build.ninja_folder()  # cpp_extension runs `ninja` from PATH; a venv's bin/ may not be on it
    if ninja and ninja not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja, os.environ.get("PATH", "")])
    if with_cuda:
        _CUDA_ARCHS, why = _build.cuda_arch_list(_build.torch_arch_names(torch), _build.visible_gpu_capabilities(torch))
        os.environ["TORCH_CUDA_ARCH_LIST"] = _CUDA_ARCHS
        log.info("fused_gradcam: compiling for CUDA architectures %s (%s)", _CUDA_ARCHS, why)
    cpp_extension.load(
        name="sportsnet_fused_gradcam" + ("_cuda" if with_cuda else ""),
        sources=[str(root / s) for s in _build.sources(root, with_cuda)],
        extra_include_paths=[str(csrc), *_build.extra_include_dirs()],
        extra_cflags=_build.CXX_FLAGS + shlex.split(os.environ.get("SPORTSNET_JIT_CFLAGS", "")),
        extra_cuda_cflags=_build.NVCC_FLAGS,
        extra_ldflags=_build.LINK_FLAGS,
        with_cuda=with_cuda,
        is_python_module=False,
    )


def _register_fake() -> None:
    def fake(activations, gradients, size, method="gradcam", normalize=True, eps=1e-7):
        return activations.new_empty((activations.shape[0], int(size[0]), int(size[1])),
                                     dtype=output_dtype(activations.dtype))

    def fake_out(activations, gradients, size, method="gradcam", normalize=True, eps=1e-7, *, out):
        return None

    torch.library.register_fake(_OP)(fake)
    torch.library.register_fake(_OP + ".out")(fake_out)
    if not has_kernel("CPU", _WEIGHTED):  # a library built before fused_weighted_cam existed
        return

    def fake_weighted(activations, weights, bias, size, normalize=True, eps=1e-7):
        return activations.new_empty((activations.shape[0], int(size[0]), int(size[1])),
                                     dtype=output_dtype(activations.dtype))

    def fake_weighted_out(activations, weights, bias, size, normalize=True, eps=1e-7, *, out):
        return None

    torch.library.register_fake(f"{_NAMESPACE}::{_WEIGHTED}")(fake_weighted)
    torch.library.register_fake(f"{_NAMESPACE}::{_WEIGHTED}.out")(fake_weighted_out)


def _load() -> str:
    """Decide the backend once; return ``"compiled"`` or ``"reference"``."""
    global _BACKEND, _KERNEL_DEVICES, _WEIGHTED_KERNEL_DEVICES, _CUDA_ARCHS
    with _lock:
        if _BACKEND is not None:
            return _BACKEND
        errors = []
        if not _registered():
            try:
                import sportsnet._C  # noqa: F401  (registers the op)

                record = Path(sportsnet._C.__file__).with_name(_build.ARCHS_RECORD)
                _CUDA_ARCHS = record.read_text().strip() if record.is_file() else None
            except ImportError as e:
                not_built = Path(__file__).resolve().parents[1] / _build.NOT_BUILT_RECORD  # setup.py's reason
                errors.append(f"sportsnet._C was not built at install: {not_built.read_text().strip()}"
                              if not_built.is_file() else f"prebuilt sportsnet._C: {e}")
        if not _registered():
            try:
                log.info("sportsnet._C is not built; compiling csrc/ just in time (once, cached)")
                _jit_build()
            except _CannotBuild as e:
                errors.append(f"just-in-time build: {e}")
            except Exception as e:  # a compiler error, no ninja...
                errors.append(f"just-in-time build: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if _registered():
            _register_fake()
            _KERNEL_DEVICES = _kernel_devices(_GRADCAM)
            _WEIGHTED_KERNEL_DEVICES = _kernel_devices(_WEIGHTED)
            log.info("fused_gradcam: compiled operator (%s kernels; fused_weighted_cam: %s)",
                     " and ".join(sorted(_KERNEL_DEVICES)), " and ".join(sorted(_WEIGHTED_KERNEL_DEVICES)) or "none")
            _BACKEND = "compiled"
        else:
            message = "fused_gradcam: the compiled operator is unavailable (" + "; ".join(errors) + ")"
            if os.environ.get("SPORTSNET_REQUIRE_EXT") == "1":
                raise RuntimeError(message + " and SPORTSNET_REQUIRE_EXT=1 forbids the reference fallback")
            warnings.warn(message + "; using the pure-PyTorch reference", RuntimeWarning, stacklevel=3)
            _BACKEND = "reference"
        return _BACKEND


def backend() -> str:
    """``"compiled"`` (the C++/CUDA operator) or ``"reference"`` (pure PyTorch). Loads on first call."""
    return _load()


def _is_compiling() -> bool:
    check = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling  # the latter: torch < 2.3
    return bool(check())


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _gpu_covered(device: torch.device) -> bool:
    """Whether the CUDA kernel was compiled for this GPU (see :data:`_CUDA_ARCHS`); warned once per
    capability when not, an error under ``SPORTSNET_REQUIRE_EXT=1``."""
    if _CUDA_ARCHS is None:
        return True
    capability = tuple(_cuda_capability(device))
    if capability not in _covered:
        _covered[capability] = _build.covers(capability, _CUDA_ARCHS)
        if not _covered[capability]:
            message = (f"fused_gradcam: the CUDA kernel was compiled for architectures {_CUDA_ARCHS}, which do not "
                       f"include this GPU's {capability[0]}.{capability[1]} (rebuild with "
                       f"TORCH_CUDA_ARCH_LIST={capability[0]}.{capability[1]})")
            if os.environ.get("SPORTSNET_REQUIRE_EXT") == "1":
                raise RuntimeError(message + " and SPORTSNET_REQUIRE_EXT=1 forbids the reference fallback")
            warnings.warn(message + "; its inputs use the pure-PyTorch reference", RuntimeWarning, stacklevel=4)
    return _covered[capability]


def _kernel_for(device: torch.device, op: str = _GRADCAM) -> bool:
    """Whether the compiled operator ``op`` runs on ``device``. False (a reference fallback, warned once
    per op and device type, or per GPU architecture) for a CPU or CUDA input that the build has no
    kernel for; an error instead under ``SPORTSNET_REQUIRE_EXT=1``. Other device types (meta) go to
    the dispatcher, where the op is registered at all."""
    devices = _KERNEL_DEVICES if op == _GRADCAM else _WEIGHTED_KERNEL_DEVICES
    device_type = device.type
    if device_type == "cuda" and device_type in devices and not _is_compiling():
        return _gpu_covered(device)
    if device_type in devices or (device_type not in _DISPATCH_KEYS and bool(devices)):
        return True
    if _is_compiling() or device_type not in _DISPATCH_KEYS:  # no warning or state change inside a traced graph
        return False
    message = (f"{op}: the compiled operator has no {_DISPATCH_KEYS[device_type]} kernel (it was built "
               f"with kernels for {sorted(devices) or 'nothing'}; e.g. no nvcc at build time, or a library "
               f"built before this operator existed)")
    if os.environ.get("SPORTSNET_REQUIRE_EXT") == "1":
        raise RuntimeError(message + " and SPORTSNET_REQUIRE_EXT=1 forbids the reference fallback")
    if (op, device_type) not in _warned_devices:
        _warned_devices.add((op, device_type))
        warnings.warn(message + f"; {device_type} inputs use the pure-PyTorch reference", RuntimeWarning, stacklevel=3)
    return False


def fused_gradcam(activations: torch.Tensor, gradients: torch.Tensor, size: Sequence[int], *,
                  method: str = "gradcam", normalize: bool = True, eps: float = 1e-7,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM-family heatmaps in one fused operator; see :func:`gradcam_reference` for the math.

    Args:
        activations, gradients: ``(B, K, h, w)`` float32/float16/bfloat16/float64 tensors on one device,
            in any layout (contiguous, channels-last or strided views; read without copies).
        size: ``(H, W)`` of the output maps.
        method: ``gradcam``, ``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam`` or
            ``gradcam-elementwise``.
        normalize: scale each map to [0, 1]; constant (or all-negative) maps become zeros.
        eps: added to the normalisation denominator (and XGrad-CAM's).
        out: optional preallocated ``(B, H, W)`` output (contiguous, float32 or float64).

    Returns ``(B, H, W)``: float32, or float64 for float64 inputs.
    """
    H, W = check_inputs(activations, gradients, size, method, eps)
    if (_BACKEND or _load()) == "reference" or not _kernel_for(activations.device):
        return gradcam_reference(activations, gradients, (H, W), method=method, normalize=normalize, eps=eps, out=out)
    op = torch.ops.sportsnet.fused_gradcam
    if out is None:
        return op.default(activations, gradients, [H, W], method, normalize, float(eps))
    op.out(activations, gradients, [H, W], method, normalize, float(eps), out=out)
    return out


def fused_weighted_cam(activations: torch.Tensor, weights: torch.Tensor, size: Sequence[int], *,
                       bias: torch.Tensor | None = None, normalize: bool = True, eps: float = 1e-7,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """CAM maps from given channel weights, ``ReLU(sum_k weights[b, k] A[b, k] + bias[b])``, resized and
    normalised as :func:`fused_gradcam` does; see :func:`weighted_cam_reference`.

    Args:
        activations: ``(B, K, h, w)`` float32/float16/bfloat16/float64, any layout.
        weights: ``(B, K)``, float32 (float64 for float64 activations).
        size: ``(H, W)`` of the output maps.
        bias: optional ``(B,)`` added to every position of a map before the ReLU, in the weights' dtype.
        normalize, eps, out: as for :func:`fused_gradcam`.

    Returns ``(B, H, W)``: float32, or float64 for float64 activations. The compiled operator is
    ``torch.ops.sportsnet.fused_weighted_cam`` (and ``.out``).
    """
    H, W = check_weighted_inputs(activations, weights, bias, size, eps)
    if (_BACKEND or _load()) == "reference" or not _kernel_for(activations.device, _WEIGHTED):
        return weighted_cam_reference(activations, weights, (H, W), bias=bias, normalize=normalize, eps=eps, out=out)
    op = torch.ops.sportsnet.fused_weighted_cam
    if out is None:
        return op.default(activations, weights, bias, [H, W], normalize, float(eps))
    op.out(activations, weights, bias, [H, W], normalize, float(eps), out=out)
    return out
