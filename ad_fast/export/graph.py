"""What every exported graph shares: a method's raw graph plus the OK/NG decision, and its description."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..decision import Decision
from ..deploy.metadata import DECIDED_OUTPUTS, RAW_OUTPUTS, Preprocess


@dataclass
class MethodGraph:
    """A method's inference graph before the decision.

    Attributes:
        module: ``forward(*inputs)`` with each input float32 ``[B, 3, H, W]`` RGB in [0, 1] →
            ``(raw_map [B, 1, H, W], raw_score [B])``.
        inputs: names of the graph inputs (the image input first).
        preprocess: how the PyTorch model resizes images into those inputs.
        notes: what the graph leaves out or fixes, for the file's metadata.
    """

    module: nn.Module
    inputs: tuple[str, ...]
    preprocess: Preprocess
    notes: str = ""


class DecidedGraph(nn.Module):
    """``raw graph`` → ``(anomaly_map, pred_score, pred_label, pred_mask, raw_map, raw_score)`` with the arithmetic of
    :meth:`ad_fast.Decision.apply`, or the raw ``(anomaly_map, pred_score)`` when ``decision`` is None."""

    def __init__(self, raw: nn.Module, decision: Decision | None) -> None:
        super().__init__()
        self.raw, self.decision = raw, decision

    @property
    def output_names(self) -> tuple[str, ...]:
        return RAW_OUTPUTS if self.decision is None else DECIDED_OUTPUTS

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw_map, raw_score = self.raw(*inputs)
        if self.decision is None:
            return raw_map, raw_score
        score = self.decision.normalise_score(raw_score)
        amap = self.decision.normalise_map(raw_map)
        return amap, score, score >= 0.5, amap >= 0.5, raw_map, raw_score
