"""Pure-PyTorch reference implementations of every ad_fast op, under the ops' own names.

Tests and benchmarks compare the compiled kernels against these; ``ad_fast.ops.use_backend("reference")``
routes every model through them.
"""

from .anomaly_map import anomaly_map_reference as anomaly_map

__all__ = ["anomaly_map"]
