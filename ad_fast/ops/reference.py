"""Pure-PyTorch reference implementations of every ad_fast op, under the ops' own names.

Tests and benchmarks compare the compiled kernels against these; ``ad_fast.ops.use_backend("reference")``
routes every model through them.
"""

from .anomaly_map import anomaly_map_reference as anomaly_map
from .hog import hog_reference as hog
from .kcenter_greedy import kcenter_greedy_reference as kcenter_greedy
from .knn import knn_reference as knn
from .soft_align import hard_align_reference as hard_align
from .soft_align import soft_align_reference as soft_align

__all__ = ["anomaly_map", "hard_align", "hog", "kcenter_greedy", "knn", "soft_align"]
