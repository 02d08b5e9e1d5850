"""The engines that run an exported file: ONNX Runtime (default) and OpenVINO (reads the ONNX file directly).

Each backend reads the file once and offers ``metadata`` (the ONNX ``metadata_props``), ``inputs`` / ``outputs``
(names) and ``run(feeds) -> {name: array}``. Neither needs torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("onnxruntime", "openvino")


def _missing(package: str) -> ImportError:
    return ImportError(f"backend {package!r}: the package is not installed (pip install {package})")


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` on the CPU (or the providers given)."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime") from None
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own (pybind) exception types
            raise ValueError(f"path: {str(path)!r} is not an ONNX model onnxruntime can load "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))


class OpenVINOBackend:
    """An OpenVINO model compiled for ``device`` (default CPU) from the ONNX file; its ``metadata_props`` are read
    from OpenVINO's runtime info (section ``framework``)."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None, device: str = "CPU") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino") from None
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise ValueError(f"path: {str(path)!r} is not an ONNX model OpenVINO can read "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
        self.metadata = _openvino_metadata(model)
        self.inputs = [i.get_any_name() for i in model.inputs]
        self.outputs = [o.get_any_name() for o in model.outputs]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}  # no silent bf16 on CPUs that have it
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, device, config)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.compiled(feeds)
        return {name: np.asarray(results[self.compiled.output(name)]) for name in self.outputs}


def _openvino_metadata(model: Any) -> dict[str, str]:
    """ONNX ``metadata_props`` as OpenVINO's ONNX frontend keeps them (``rt_info["framework"]``)."""
    try:
        framework = model.get_rt_info()["framework"]
    except (KeyError, RuntimeError, IndexError):
        return {}
    items = framework.items() if hasattr(framework, "items") else []
    return {str(k): str(v.astype(str) if hasattr(v, "astype") else v) for k, v in items}


def open_backend(path: str | os.PathLike, backend: str = "auto", threads: int | None = None) -> Any:
    """The engine for ``path``: ``"onnxruntime"``, ``"openvino"``, or ``"auto"`` (onnxruntime, else OpenVINO)."""
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"backend: expected one of {(*BACKENDS, 'auto')}, got {backend!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected None or a positive int, got {threads!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    if backend == "auto":
        try:
            return OnnxRuntimeBackend(path, threads)
        except ImportError:
            try:
                return OpenVINOBackend(path, threads)
            except ImportError:
                raise ImportError("the ad_fast runtime needs onnxruntime or openvino: "
                                  "pip install onnxruntime (or openvino)") from None
    return (OnnxRuntimeBackend if backend == "onnxruntime" else OpenVINOBackend)(path, threads)
