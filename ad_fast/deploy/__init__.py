"""Torch-free runtime for exported ad_fast models: NumPy, Pillow and ONNX Runtime (or OpenVINO).

``import ad_fast.deploy`` imports neither torch nor the rest of ad_fast's PyTorch code::

    from ad_fast.deploy import Inferencer
    result = Inferencer("dmad.onnx").predict("part.png")    # DeployResult (NumPy): anomaly_map, pred_label, ...
"""

from .backends import BACKENDS
from .inferencer import DeployResult, Inferencer
from .metadata import ExportInfo, Preprocess

__all__ = ["BACKENDS", "DeployResult", "ExportInfo", "Inferencer", "Preprocess"]
