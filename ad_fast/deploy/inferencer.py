"""Run an exported ad_fast model with NumPy, Pillow and ONNX Runtime (or OpenVINO) only — no torch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import open_backend
from .metadata import METADATA_KEY, ExportInfo
from .preprocess import as_image_list, batches, check_pixels, prepare


@dataclass
class DeployResult:
    """The fields of :class:`ad_fast.AnomalyResult`, as NumPy arrays, for a batch of B images.

    Attributes:
        anomaly_map (float32 [B, 1, H, W]): at the exported size; normalised to [0, 1] (threshold 0.5) when the
            file holds a decision, else the method's raw map.
        pred_score (float32 [B]): the image score, normalised likewise.
        pred_label (bool [B]) / pred_mask (bool [B, 1, H, W]): NG images / defective pixels; None without a decision.
        raw_score (float32 [B]) / raw_map (float32 [B, 1, H, W]): the method's own values; None without a decision.
        sizes: the original ``(H, W)`` of each input image.
    """

    anomaly_map: np.ndarray
    pred_score: np.ndarray
    pred_label: np.ndarray | None = None
    pred_mask: np.ndarray | None = None
    raw_score: np.ndarray | None = None
    raw_map: np.ndarray | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.anomaly_map.shape[0])

    def to_anomaly_result(self) -> Any:
        """The same values as an :class:`ad_fast.AnomalyResult` (imports torch)."""
        import torch

        from ..results import AnomalyResult

        tensor = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return AnomalyResult(tensor(self.anomaly_map), tensor(self.pred_score), tensor(self.pred_mask),
                             tensor(self.pred_label), raw_score=tensor(self.raw_score), raw_map=tensor(self.raw_map))


class Inferencer:
    """An exported ad_fast model (``model.export(path)`` / ``ad-fast export``), ready to score images.

    Args:
        path: the ``.onnx`` file.
        backend: ``"onnxruntime"``, ``"openvino"`` or ``"auto"`` (default: onnxruntime when installed, else OpenVINO).
        threads: intra-op threads (default: the engine's choice).

    Example::

        from ad_fast.deploy import Inferencer
        model = Inferencer("dmad.onnx")
        result = model.predict(["a.png", "b.png"])   # DeployResult: anomaly_map [2, 1, S, S], pred_label [2], ...

    Raises:
        FileNotFoundError: no such file. ValueError: not an ONNX model, or not an ad_fast export (no or bad
        ``"ad_fast"`` metadata). ImportError: neither onnxruntime nor openvino is installed.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", threads: int | None = None) -> None:
        self.path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
        self.engine = open_backend(path, backend, threads)
        text = self.engine.metadata.get(METADATA_KEY)
        if text is None:
            raise ValueError(f"path: {self.path!r} is an ONNX model but not an ad_fast export (no {METADATA_KEY!r} "
                             "metadata); export it with model.export(path) or `ad-fast export`")
        self.info = ExportInfo.from_json(text, f"path {self.path!r}")
        missing = sorted(set(self.info.inputs + self.info.outputs) - set(self.engine.inputs + self.engine.outputs))
        if missing:
            raise ValueError(f"path: {self.path!r}: the graph lacks the inputs/outputs {missing} its metadata names")

    @property
    def method(self) -> str:
        return self.info.method

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` images are resized to; maps come out at this size."""
        return self.info.preprocess.size

    @property
    def backend(self) -> str:
        return self.engine.name

    def __repr__(self) -> str:
        return (f"Inferencer({self.path!r}, method={self.method!r}, size={self.size}, backend={self.backend!r}, "
                f"decision={'yes' if self.info.decides else 'no (raw outputs)'})")

    def run(self, images: np.ndarray, prompt: np.ndarray | None = None) -> DeployResult:
        """One graph run on prepared pixels: float ``[B, 3, H, W]`` in [0, 1] at :attr:`size` (and, for a graph
        with a ``prompt`` input, prompts of the same shape, one per image)."""
        pixels = check_pixels(images, self.info.preprocess, "images")
        feeds = {self.info.inputs[0]: pixels}
        wants_prompt = "prompt" in self.info.inputs
        if wants_prompt != (prompt is not None):
            raise ValueError(f"prompt: the {self.method} export {'needs' if wants_prompt else 'takes no'} prompt "
                             "image(s)" + (" (a normal image of the same kind, one or one per image)"
                                           if wants_prompt else ""))
        if prompt is not None:
            prompt = check_pixels(prompt, self.info.preprocess, "prompt")
            if prompt.shape[0] not in (1, pixels.shape[0]):
                raise ValueError(f"prompt: expected 1 or {pixels.shape[0]} prompts (one per image), got {prompt.shape[0]}")
            feeds["prompt"] = np.broadcast_to(prompt, pixels.shape).copy() if prompt.shape[0] == 1 else prompt
        outputs = self.engine.run(feeds)
        return DeployResult(**{name: outputs[name] for name in self.info.outputs})

    def predict(self, images: Any, prompt: Any = None, batch_size: int = 8) -> DeployResult:
        """Score images: paths, PIL images, NumPy arrays (``[H, W]``, ``[H, W, C]``), a list of them, or an array
        ``[B, H, W, C]``; any size (resized as the PyTorch model resizes them). ``prompt``: normal image(s) for
        methods exported with a prompt input (MetaUAS), one for all or one per image. Returns a
        :class:`DeployResult` whose maps are at :attr:`size`."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        pixels, sizes = prepare(images, self.info.preprocess, "images")
        prompts = None
        if prompt is not None:
            prompts, _ = prepare(as_image_list(prompt, "prompt"), self.info.preprocess, "prompt")
            if prompts.shape[0] not in (1, pixels.shape[0]):
                raise ValueError(f"prompt: expected 1 or {pixels.shape[0]} prompts (one per image), "
                                 f"got {prompts.shape[0]}")
        parts = []
        for part in batches(pixels.shape[0], batch_size):
            part_prompt = None if prompts is None else (prompts if prompts.shape[0] == 1 else prompts[part])
            parts.append(self.run(pixels[part], part_prompt))
        merged = {name: np.concatenate([getattr(p, name) for p in parts]) for name in self.info.outputs}
        return DeployResult(**merged, sizes=sizes)
