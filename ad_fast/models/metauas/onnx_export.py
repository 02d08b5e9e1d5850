"""ONNX export of the MetaUAS inference graph: query and prompt images in [0, 1] → anomaly map and image score.

The graph is ``MetaUAS.forward`` (ImageNet normalisation, encoder, feature alignment, decoder, sigmoid) plus the
image score of :meth:`MetaUAS.predict_pairs` (the map maximum). Resizing is not part of it: feed ``S x S`` images,
``S`` the exported side. Soft (and hard) alignment are traced through the pure-PyTorch reference math, since the
compiled ``ad_fast::`` ops have no ONNX translation. The exporter is ``torch.onnx.export(dynamo=True)``
(``torch.export`` + onnxscript), whose native opset is 18: lower opsets fail to convert (``Pad``).
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ... import ops
from ..._io import atomic_path
from .config import check_img_size
from .encoding import image_scores

if TYPE_CHECKING:
    from .model import MetaUAS

INPUT_NAMES = ("query", "prompt")
OUTPUT_NAMES = ("anomaly_map", "pred_score")
OPSET = 18  # the exporter's native opset: the default and the minimum
_TRACE_BATCH = 2  # torch.export specialises sizes 0 and 1, so a dynamic batch is traced at 2


class _InferenceGraph(nn.Module):
    """``(query [B, 3, S, S], prompt [B, 3, S, S])`` in [0, 1] → ``(anomaly_map [B, 1, S, S], pred_score [B])``."""

    def __init__(self, model: "MetaUAS"):
        super().__init__()
        self.model = model

    def forward(self, query: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.model(query, prompt)
        return maps, image_scores(maps)


def _require_exporter() -> None:
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"ONNX export needs the {name!r} package: pip install 'ad_fast[onnx]'") from error


def _check_args(path: str | os.PathLike, img_size: int, batch_size: int | None, opset: int) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"path: expected a file name ending in .onnx, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a folder, expected a file name")
    check_img_size(img_size)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected None (dynamic) or a positive int, got {batch_size!r}")
    if not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset: expected an int >= {OPSET} (the exporter's native opset), got {opset!r}")
    return path


def export_onnx(model: "MetaUAS", path: str | os.PathLike, *, img_size: int | None = None,
                batch_size: int | None = None, opset: int | None = None) -> Path:
    """Write ``model``'s inference graph to one self-contained ONNX file (weights included; see the module doc).

    Args:
        model: the MetaUAS to export (eval mode is used; its train/eval mode is restored afterwards).
        path: destination ``.onnx`` file; written atomically, parent folders created.
        img_size: side S of the graph's inputs and outputs, a multiple of 32. Default: ``model.img_size``.
        batch_size: None (default) for a dynamic batch axis ``"batch"``, or a fixed batch size.
        opset: ONNX opset, >= 18. Default (None): 18.

    The graph's inputs are ``query (float32[B, 3, S, S])`` and ``prompt (float32[B, 3, S, S])``: RGB in [0, 1],
    one prompt per query (repeat a shared prompt B times); outputs ``anomaly_map (float32[B, 1, S, S])`` in [0, 1]
    and ``pred_score (float32[B])``, the map maximum.

    Returns:
        The written path.

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is not installed (``pip install 'ad_fast[onnx]'``).
        TypeError / ValueError: a bad ``path``, ``img_size``, ``batch_size`` or ``opset`` (named in the message).
    """
    img_size = model.img_size if img_size is None else img_size
    opset = OPSET if opset is None else opset
    path = _check_args(path, img_size, batch_size, opset)
    _require_exporter()
    parameter = model.mask_head.weight
    examples = tuple(torch.rand(batch_size or _TRACE_BATCH, 3, img_size, img_size, dtype=parameter.dtype,
                                device=parameter.device) for _ in INPUT_NAMES)
    batch_axis = None if batch_size else {0: torch.export.Dim("batch")}
    was_training = model.training
    graph = _InferenceGraph(model).eval()
    try:
        with ops.use_backend("reference"), torch.no_grad(), atomic_path(path) as tmp, warnings.catch_warnings():
            # Both inputs share the batch Dim; the exporter notes that it names the axis once.
            warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
            program = torch.onnx.export(
                graph, examples, dynamo=True, opset_version=opset, verbose=False,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes=None if batch_axis is None else {"query": batch_axis, "prompt": batch_axis})
            first_dim = program.model.graph.inputs[0].shape[0]
            if batch_axis is not None and isinstance(first_dim, int):
                raise RuntimeError("export_onnx: the exporter fixed the batch axis at "
                                   f"{first_dim}; pass batch_size={first_dim} or report this as a bug")
            program.save(tmp, external_data=False)
    finally:
        model.train(was_training)
    return path
