"""oreal: exact, fast active-learning acquisition for semantic segmentation, in pure PyTorch.

The one call most users need::

    sel = oreal.select(probs, sp_map, labeled_counts, budget, num_superpixels=S, exclude=labeled)

See the docs for the math (``docs/math.md``) and every function's shapes, tie-breaking and determinism.
"""

from oreal.aggregate import (
    aggregate,
    dominant_labels,
    superpixel_counts,
    superpixel_label_counts,
    superpixel_max,
    superpixel_mean,
    superpixel_min,
    superpixel_sum,
)
from oreal.balance import class_counts, class_debt
from oreal.metrics import aualc, confusion_matrix, miou, miou_from_confusion
from oreal.select import Selection, candidates, greedy_per_class, select, superpixel_ovr_entropy, topk
from oreal.uncertainty import bald, balent, binary_entropy, bvsb, entropy, margin, ovr_entropy
from oreal import strategies  # noqa: E402,F401  (oreal.strategies.query, oreal.strategies.available)
from oreal import stream  # noqa: E402,F401  (oreal.stream.StreamingSelector; imports strategies)
from oreal import labels  # noqa: E402,F401  (oreal.labels.region_masks, partial_labels, relabel_superpixels)
from oreal import superpixels  # noqa: E402,F401  (oreal.superpixels.compute; OpenCV / scikit-image imported lazily)
from oreal import pool  # noqa: E402,F401  (oreal.pool.score_pool: a model and a DataLoader into a StreamingSelector)
from oreal import semi, weak  # noqa: E402,F401  (weak multi-class labels; pseudo labels and PLAR)
from oreal import crf  # noqa: E402,F401  (oreal.crf.crf_refine)
from oreal import export  # noqa: E402,F401  (oreal.export: Label Studio tasks and answers; torch and stdlib only)

__version__ = "0.1.0"

__all__ = [
    "Selection",
    "aggregate",
    "aualc",
    "bald",
    "balent",
    "binary_entropy",
    "bvsb",
    "candidates",
    "class_counts",
    "class_debt",
    "confusion_matrix",
    "dominant_labels",
    "entropy",
    "greedy_per_class",
    "margin",
    "miou",
    "miou_from_confusion",
    "ovr_entropy",
    "select",
    "superpixel_counts",
    "superpixel_label_counts",
    "superpixel_max",
    "superpixel_mean",
    "superpixel_min",
    "superpixel_ovr_entropy",
    "superpixel_sum",
    "topk",
]
