"""Finer-CAM (Zhang et al., 2025): a gradient method (Grad-CAM by default) whose differentiated score
compares the target class with the ``comparisons`` classes whose logits are nearest to it, so the map
shows what tells the target apart from its look-alikes rather than what it shares with them:

    score = sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9),   p = softmax(y), j the nearest classes

(pytorch-grad-cam's FinerWeightedTarget; the probabilities are part of the differentiated function).
With ``alpha = 0`` the score is the target's logit: plain Grad-CAM.
"""
from __future__ import annotations

from .explainer import GradCAM


class FinerCAM(GradCAM):
    """Args (besides :class:`GradCAM`'s): ``alpha`` (default 1), ``comparisons`` (default 3), the number
    of nearest classes compared with."""

    def __init__(self, model, target_layer=None, size=None, *, method: str = "gradcam", alpha: float = 1.0,
                 comparisons: int = 3):
        super().__init__(model, target_layer, method, size)
        if not isinstance(comparisons, int) or comparisons < 1:
            raise ValueError(f"comparisons={comparisons!r} must be a positive integer")
        self.name, self.alpha, self.comparisons = "finercam", float(alpha), comparisons

    def _score(self, logits, classes):
        y = logits.float()
        target = y.gather(1, classes[:, None])
        distance = (y - target).abs().scatter(1, classes[:, None], float("inf"))  # never the target itself
        n = min(self.comparisons, y.shape[1] - 1)
        if n == 0:
            return target[:, 0]
        nearest = distance.topk(n, dim=1, largest=False).indices  # (B, n)
        p = y.softmax(1).gather(1, nearest)
        return (p * (target - self.alpha * y.gather(1, nearest))).sum(1) / (p.sum(1) + 1e-9)
