"""Finer-CAM (Zhang et al., 2025): a gradient method (Grad-CAM by default) whose differentiated score
compares the target class with the ``comparisons`` classes whose logits are nearest to it, so the map
shows what tells the target apart from its look-alikes rather than what it shares with them:

    score = sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9),   p = softmax(y), j the nearest classes

(pytorch-grad-cam's FinerWeightedTarget; the probabilities are part of the differentiated function).
With ``alpha = 0`` the score is the target's logit: plain Grad-CAM.
"""
from __future__ import annotations

from .explainer import GradientWeightedCAM, check_op_method


class FinerCAM(GradientWeightedCAM):
    """Args (besides :class:`CamExplainer`'s): ``method``, the gradient method whose map is made (default
    ``gradcam``, one of ``sportsnet.ops.METHODS``); ``alpha`` (default 1); ``comparisons`` (default 3), the
    number of nearest classes compared with."""

    name = "finercam"

    def __init__(self, model, target_layer=None, *, method: str = "gradcam", alpha: float = 1.0, comparisons: int = 3,
                 **options):
        super().__init__(model, target_layer, **options)
        self.op_method = check_op_method(method, "FinerCAM")
        if not isinstance(comparisons, int) or comparisons < 1:
            raise ValueError(f"comparisons={comparisons!r} must be a positive integer")
        self.alpha, self.comparisons = float(alpha), comparisons

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
