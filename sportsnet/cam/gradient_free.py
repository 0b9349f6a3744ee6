"""What the gradient-free methods share: many forwards of the model (or of the part after the target
layer) in large batches under ``torch.inference_mode``, at the precision and memory format this
device runs fastest (:mod:`sportsnet.hardware` decides, and logs the choice once)."""
from __future__ import annotations

import torch
from torch import nn

from ..hardware import autocast, resolve_channels_last, resolve_precision
from .explainer import CamExplainer, TargetLayers


class GradientFreeCAM(CamExplainer):
    """Args (besides :class:`CamExplainer`'s):
        batch_size: forwards per batch (masked images, ablated activations); ``None``: the method's
            choice for the device (:meth:`default_batch_size`).
        precision: ``auto`` (the method's choice for the device, :meth:`auto_precision`: bf16 where this
            device has it natively, else fp32, unless the method needs fp32), ``fp32``, ``bf16`` or ``fp16``:
            the autocast of the extra forwards (the first forward, which picks the classes, runs as the
            caller's model does).
        channels_last: run the extra forwards' images channels-last; ``None``: where this device's conv
            kernels are faster so.
    """

    needs_gradients = False

    def __init__(self, model: nn.Module, target_layer: TargetLayers = None, *, size: tuple[int, int] | None = None,
                 batch_size: int | None = None, precision: str = "auto", channels_last: bool | None = None,
                 **layout_options):
        super().__init__(model, target_layer, size=size, **layout_options)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer or None (the method's choice)")
        self.requested_batch_size, self.precision, self.channels_last = batch_size, precision, channels_last

    def default_batch_size(self, device: torch.device) -> int:
        """Forwards per batch when the caller did not say: large, as the extra forwards of most methods run
        only small layer-sized tensors."""
        return 128

    def batch_size_for(self, device: torch.device) -> int:
        """The batch size this call uses on ``device``."""
        return self.requested_batch_size or self.default_batch_size(device)

    def auto_precision(self, device: torch.device) -> str:
        """What ``precision="auto"`` means for this method on ``device``: the hardware's choice
        (:func:`sportsnet.hardware.resolve_precision`)."""
        return resolve_precision("auto", device)

    def _forward(self, fn, x: torch.Tensor, images: bool = True) -> torch.Tensor:
        """``fn(x)`` as float32 logits, under this explainer's autocast (images channels-last if chosen)."""
        device = x.device
        if images and x.dim() == 4 and resolve_channels_last(self.channels_last, device):
            x = x.contiguous(memory_format=torch.channels_last)
        precision = self.auto_precision(device) if self.precision == "auto" else resolve_precision(self.precision,
                                                                                                  device)
        with autocast(device, precision):
            return fn(x).float()
