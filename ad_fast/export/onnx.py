"""Writing a :class:`~ad_fast.export.graph.MethodGraph` plus its decision to one self-contained ONNX file.

The exporter is ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), whose native opset is 18: lower
opsets fail to convert (``Pad``). Every ``ad_fast::`` op is traced through its pure-PyTorch reference math
(``ops.use_backend("reference")``), since the compiled ops have no ONNX translation. The batch axis is dynamic
unless ``batch_size`` fixes it; the spatial size is fixed. The file's ``metadata_props["ad_fast"]`` holds the
:class:`ad_fast.deploy.ExportInfo` that :class:`ad_fast.deploy.Inferencer` reads.
"""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path

import torch

from .. import __version__, ops
from .._io import atomic_path
from ..deploy.metadata import METADATA_KEY, ExportInfo
from .graph import DecidedGraph, MethodGraph
from .translations import custom_translations

OPSET = 18  # the exporter's native opset: the default and the minimum
_TRACE_BATCH = 2  # torch.export specialises sizes 0 and 1, so a dynamic batch is traced at 2


def require_exporter() -> None:
    """ImportError naming the extra unless ``onnx`` and ``onnxscript`` import."""
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ImportError(f"ONNX export needs the {name!r} package: pip install 'ad_fast[onnx]'") from error


def check_path(path: str | os.PathLike) -> Path:
    """The destination as a Path; TypeError / ValueError unless it names a ``.onnx`` file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"path: expected a file name ending in .onnx, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a folder, expected a file name")
    return path


def check_options(batch_size: int | None, opset: int | None) -> int:
    """Validate ``batch_size`` and ``opset``; returns the opset to use."""
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size: expected None (dynamic) or a positive int, got {batch_size!r}")
    opset = OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < OPSET:
        raise ValueError(f"opset: expected an int >= {OPSET} (the exporter's native opset), got {opset!r}")
    return opset


def write_onnx(method: str, graph: MethodGraph, decision, path: Path, batch_size: int | None, opset: int,
               device: torch.device) -> Path:
    """Trace ``graph`` (+ ``decision``, or raw outputs when None) and write it to ``path`` atomically."""
    module = DecidedGraph(graph.module, decision).eval()
    size = graph.preprocess.size
    examples = tuple(torch.rand(batch_size or _TRACE_BATCH, 3, *size, device=device) for _ in graph.inputs)
    batch_axis = None if batch_size else torch.export.Dim("batch")
    info = ExportInfo(method=method, inputs=graph.inputs, outputs=module.output_names, preprocess=graph.preprocess,
                      decision=None if decision is None else decision.to_dict(), ad_fast_version=__version__,
                      notes=graph.notes if decision is not None else
                      " ".join(filter(None, [graph.notes, "No decision: the model had none when exported, so the "
                                             "outputs are the raw map and score, without pred_label/pred_mask."])))
    with ops.use_backend("reference"), torch.no_grad(), atomic_path(path) as tmp, warnings.catch_warnings():
        # Inputs sharing the batch Dim: the exporter notes that it names the axis once.
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
        program = torch.onnx.export(
            module, examples, dynamo=True, opset_version=opset, verbose=False,
            custom_translation_table=custom_translations(),
            input_names=list(graph.inputs), output_names=list(module.output_names),
            dynamic_shapes=None if batch_axis is None else (tuple({0: batch_axis} for _ in graph.inputs),))
        first_dim = program.model.graph.inputs[0].shape[0]
        if batch_axis is not None and isinstance(first_dim, int):
            raise RuntimeError(f"export: the exporter fixed the batch axis at {first_dim}; pass "
                               f"batch_size={first_dim} or report this as a bug")
        program.model.metadata_props[METADATA_KEY] = info.to_json()
        program.save(tmp, external_data=False)
    return path
