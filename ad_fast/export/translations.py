"""ONNX translations for the ATen ops of ad_fast's reference math that the exporter or ONNX Runtime lack.

- ``hypot(a, b)`` (HOG gradient magnitudes) has no ONNX translation: ``sqrt(a² + b²)``, within one rounding of
  hypot for the finite values the references feed it (pixel gradients: no overflow).
- ``atan2(y, x)`` in float64 (the HOG reference bins orientations in float64) would become ``Atan`` on doubles,
  which ONNX Runtime does not implement: the angle is computed in float32 and refined by one Newton step in the
  input's dtype, ``θ + (y·cos θ - x·sin θ) / r`` (error ~1e-7³, below float64 rounding), and the angles that pixel
  data hits exactly (axes and diagonals: 0, ±π/4, ±π/2, ±3π/4, π) are set to their exact values, so orientation
  bins agree with PyTorch's.
"""

from __future__ import annotations

import math

import torch


def custom_translations() -> dict:
    """``{op overload: onnxscript function}`` for ``torch.onnx.export(custom_translation_table=...)``."""
    import numpy as np
    from onnx import TensorProto, numpy_helper
    from onnxscript import opset18 as op

    def hypot(a, b):
        return op.Sqrt(op.Add(op.Mul(a, a), op.Mul(b, b)))

    def atan2(y, x):
        like = lambda value: op.CastLike(op.Constant(value_float=value), y)  # noqa: E731
        zero = like(0.0)
        pi = op.CastLike(op.Constant(value=numpy_helper.from_array(np.array(math.pi, dtype=np.float64))), y)
        y32, x32 = op.Cast(y, to=TensorProto.FLOAT), op.Cast(x, to=TensorProto.FLOAT)
        base = op.Atan(op.Div(y32, x32))
        half_turn = op.Where(op.GreaterOrEqual(y32, op.Constant(value_float=0.0)),
                             op.Constant(value_float=math.pi), op.Constant(value_float=-math.pi))
        theta = op.CastLike(op.Where(op.Less(x32, op.Constant(value_float=0.0)), op.Add(base, half_turn), base), y)
        r = op.Sqrt(op.Add(op.Mul(x, x), op.Mul(y, y)))
        step = op.Div(op.Sub(op.Mul(y, op.Cos(theta)), op.Mul(x, op.Sin(theta))), op.Where(op.Equal(r, zero), like(1.0), r))
        theta = op.Add(theta, step)
        sign = op.Where(op.Less(y, zero), like(-1.0), like(1.0))
        exact_diagonal = op.Mul(sign, op.Where(op.Greater(x, zero), op.Div(pi, like(4.0)),
                                               op.Mul(op.Div(pi, like(4.0)), like(3.0))))
        theta = op.Where(op.Equal(op.Abs(x), op.Abs(y)), exact_diagonal, theta)
        theta = op.Where(op.Equal(x, zero), op.Mul(sign, op.Div(pi, like(2.0))), theta)
        on_axis = op.Where(op.Less(x, zero), pi, zero)
        return op.Where(op.Equal(y, zero), on_axis, theta)

    return {torch.ops.aten.hypot.default: hypot, torch.ops.prims.hypot.default: hypot,
            torch.ops.aten.atan2.default: atan2}
