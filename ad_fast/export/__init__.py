"""Export a fitted ad_fast model to one ONNX file that decides OK/NG by itself (see :func:`export_model`).

Run the file with :class:`ad_fast.deploy.Inferencer` (no torch needed) or any ONNX runtime.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import torch

from .onnx import check_options, check_path, require_exporter, write_onnx

FORMATS = ("onnx",)


METHODS = ("dmad", "metauas", "onenip", "redi")


def _builder(model: Any) -> tuple[str, Any]:
    """(method name, graph builder) for ``model``: ``ad_fast.export.<method>.build``, imported by name so that the
    Detector base, which calls this package, imports no method."""
    method = getattr(model, "method", None)
    if not isinstance(model, torch.nn.Module) or method not in METHODS:
        raise TypeError(f"model: expected one of ad_fast's MetaUAS, DMAD, OneNIP or ReDi, got {type(model).__name__}")
    return method, importlib.import_module(f"{__name__}.{method}").build


def export_model(model: Any, path: str | os.PathLike, format: str = "onnx", *, batch_size: int | None = None,
                 opset: int | None = None, **options: Any) -> Path:
    """Write ``model``'s inference graph, ending in its decision, to one self-contained file.

    Args:
        model: a fitted MetaUAS, DMAD, OneNIP or ReDi. Its ``decision`` (an :class:`ad_fast.Decision`), when set,
            is embedded: the graph outputs the normalised ``anomaly_map`` [B, 1, S, S] and ``pred_score`` [B],
            ``pred_label`` [B] and ``pred_mask`` [B, 1, S, S] (bool), ``raw_map`` and ``raw_score``, as
            ``model.predict`` returns them. Without one the graph outputs the raw ``anomaly_map`` and ``pred_score``
            (as ``predict`` does then) and the file's metadata says so.
        path: destination ``.onnx`` file; written atomically, parent folders created.
        format: ``"onnx"``.
        batch_size: None (default) for a dynamic batch axis, or a fixed batch size.
        opset: ONNX opset, >= 18 (default 18).
        options: per method — MetaUAS ``img_size`` (multiple of 32; default the model's), DMAD ``bank_dtype``
            (``"float32"`` or ``"float16"``; default the banks' own dtype).

    The graph takes float32 ``[B, 3, S, S]`` RGB in [0, 1] (``images``; MetaUAS: ``query`` and ``prompt``), with the
    mean/std normalisation inside; resizing to S is the caller's (``ad_fast.deploy`` does it as PyTorch does).
    The file's ``metadata_props["ad_fast"]`` records method, preprocessing and decision.

    Returns:
        The written path.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (``pip install 'ad_fast[onnx]'``).
        TypeError / ValueError: a bad argument, named in the message, or a model that cannot be exported as it is
            configured (e.g. an unfitted one).
    """
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    method, build = _builder(model)
    path = check_path(path)
    opset = check_options(batch_size, opset)
    accepted = [name for name in inspect.signature(build).parameters if name != "model"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{unknown[0]}: not an export option of {method} (its options: {accepted or 'none'})")
    graph = build(model, **options)
    require_exporter()
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    modes = [(module, module.training) for module in graph.module.modules()]  # eval() for the trace, then back
    try:
        return write_onnx(method, graph, getattr(model, "decision", None), path, batch_size, opset, device)
    finally:
        for module, training in modes:
            module.training = training


__all__ = ["FORMATS", "export_model"]
