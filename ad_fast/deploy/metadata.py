"""What an ad_fast ONNX file says about itself: one JSON document under the metadata key ``"ad_fast"``.

Written by :mod:`ad_fast.export`, read by :class:`ad_fast.deploy.Inferencer`; plain Python (no torch, no onnx), so
the exporter and the torch-free runtime share one schema::

    {"format": "ad_fast.onnx", "format_version": 1, "ad_fast_version": "0.1.0", "method": "dmad",
     "inputs": ["images"],                       # graph inputs, each float32 [B, 3, S, S] RGB in [0, 1]
     "outputs": ["anomaly_map", "pred_score", ...],
     "preprocess": {"size": [S, S], "resize": "bilinear", "align_corners": false, "antialias": true,
                    "clamp": true, "mean": [...], "std": [...], "normalised_in_graph": true},
     "decision": {...} or null,                  # ad_fast.Decision.to_dict() when the graph decides OK/NG
     "notes": "..."}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

METADATA_KEY = "ad_fast"
FORMAT = "ad_fast.onnx"
FORMAT_VERSION = 1
RAW_OUTPUTS = ("anomaly_map", "pred_score")
DECIDED_OUTPUTS = ("anomaly_map", "pred_score", "pred_label", "pred_mask", "raw_map", "raw_score")
RESIZE_MODES = ("bilinear",)


@dataclass(frozen=True)
class Preprocess:
    """How the PyTorch model turns an image into the graph's input.

    Attributes:
        size: ``(H, W)`` the images are resized to (the graph's fixed spatial size).
        resize: interpolation, ``"bilinear"``.
        align_corners, antialias: the ``torch.nn.functional.interpolate`` flags the model resizes with.
        clamp: whether the resized pixels are clamped to [0, 1].
        mean, std: per-channel normalisation the graph applies itself (``normalised_in_graph``): inputs stay in [0, 1].
    """

    size: tuple[int, int]
    resize: str = "bilinear"
    align_corners: bool = False
    antialias: bool = True
    clamp: bool = True
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    normalised_in_graph: bool = True

    def __post_init__(self) -> None:
        size = tuple(self.size) if isinstance(self.size, (list, tuple)) else ()
        if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise ValueError(f"preprocess.size: expected two positive ints (H, W), got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"preprocess.resize: expected one of {RESIZE_MODES}, got {self.resize!r}")
        if self.antialias and self.align_corners:
            raise ValueError("preprocess: antialias with align_corners=True is not a torch resize")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass(frozen=True)
class ExportInfo:
    """The ``"ad_fast"`` metadata of an exported file (see the module doc)."""

    method: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    preprocess: Preprocess
    decision: dict[str, Any] | None = None
    notes: str = ""
    ad_fast_version: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def decides(self) -> bool:
        """Whether the graph ends in the OK/NG decision (``pred_label`` / ``pred_mask`` outputs)."""
        return self.decision is not None

    def to_json(self) -> str:
        state = asdict(self)
        state["preprocess"]["size"] = list(self.preprocess.size)
        return json.dumps(state, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "file") -> "ExportInfo":
        """Parse and check the metadata; ``ValueError`` naming ``source`` when it is not an ad_fast export."""
        try:
            state = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{source}: the {METADATA_KEY!r} metadata is not JSON ({error})") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{source}: not an ad_fast export (metadata format {state.get('format')!r}, "
                             f"expected {FORMAT!r})" if isinstance(state, dict) else f"{source}: not an ad_fast export")
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source}: ad_fast export format_version {state.get('format_version')!r} is not "
                             f"supported by this runtime (expected {FORMAT_VERSION}); export the model again")
        try:
            state["preprocess"] = Preprocess(**state["preprocess"])
            state["inputs"], state["outputs"] = tuple(state["inputs"]), tuple(state["outputs"])
            return cls(**state)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: malformed ad_fast metadata ({error})") from None


__all__ = ["DECIDED_OUTPUTS", "ExportInfo", "FORMAT", "FORMAT_VERSION", "METADATA_KEY", "Preprocess", "RAW_OUTPUTS"]
