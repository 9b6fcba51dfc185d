"""One-shot pruning of a trained model from a little calibration data (post-training).

The *score -> select -> mask* steps for a model that is already trained and will not be
trained again: each ``nn.Linear`` is pruned so that its outputs on calibration inputs
``X`` change as little as possible, ``min ||W X - W' X||^2`` (layer-wise reconstruction).

* :func:`~sparsekit.posttrain.calibration.calibrate` records ``H = sum x^T x`` (the Gram matrix of a
  layer's inputs) per layer;
* :func:`~sparsekit.posttrain.wanda.wanda_mask` — Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs":
  score ``|W_ij| * ||X_j||``, compared within each output row, no weight update;
* :func:`~sparsekit.posttrain.sparsegpt.sparsegpt` — Frantar & Alistarh 2023, "SparseGPT", Algorithm 1: an adaptive mask
  and the optimal brain surgeon update of the weights not yet processed;
* :func:`~sparsekit.posttrain.oneshot.prune` — both (and per-row magnitude) over a whole model, layer after layer.
"""

from .calibration import CalibrationStats, calibrate
from .oneshot import METHODS, prune
from .sparsegpt import sparsegpt
from .wanda import row_magnitude_mask, wanda_mask

__all__ = ["CalibrationStats", "calibrate", "wanda_mask", "row_magnitude_mask", "sparsegpt", "prune", "METHODS"]
