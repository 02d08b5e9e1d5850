"""The trainable part of OneNIP: projections, positional embedding, transformer and refiner (``reconstruction.*``)."""

from __future__ import annotations

import torch
from torch import nn

from .attention import LearnedPositionEmbedding, neighbour_mask
from .backbone import FEATURE_CHANNELS
from .refiner import Refiner
from .transformer import Transformer


def feature_jitter(tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """``x + ε · ||x||_2 / C · scale`` per token (ε ~ N(0, I_C), norm over the C channels of ``[..., C]``)."""
    norm = tokens.norm(dim=-1, keepdim=True)
    return tokens + torch.randn_like(tokens) * norm / tokens.shape[-1] * scale


class Reconstruction(nn.Module):
    """Reconstruct target features from one normal prompt's features, and refine the error into anomaly logits.

    Args:
        feature_size: ``(h, w)`` of the stride-16 feature maps (the positional tables and mask depend on it).
        hidden_dim, heads, ffn_dim, encoder_depth, decoder_depth, dropout: transformer sizes (release: 256, 8,
            1024, 4, 4, 0.1).
        decoder_variant: one of ``transformer.DECODER_VARIANTS`` (see :class:`ad_fast.models.onenip.OneNIP`).
        neighbour: ``(n_h, n_w)`` of the neighbour mask, default ``(h // 2, w // 2)`` as the release; ``(0, 0)``
            masks only the token itself.
    """

    def __init__(self, feature_size: tuple[int, int], hidden_dim: int = 256, heads: int = 8, ffn_dim: int = 1024,
                 encoder_depth: int = 4, decoder_depth: int = 4, dropout: float = 0.1,
                 decoder_variant: str = "v2_fixed", neighbour: tuple[int, int] | None = None):
        super().__init__()
        height, width = feature_size
        self.feature_size = (int(height), int(width))
        self.pos_embed = LearnedPositionEmbedding(height, width, hidden_dim)
        self.transformer = Transformer(hidden_dim, heads, ffn_dim, encoder_depth, decoder_depth, dropout,
                                       decoder_variant, height * width)
        self.input_proj = nn.Linear(FEATURE_CHANNELS, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, FEATURE_CHANNELS)
        self.seghead = Refiner(FEATURE_CHANNELS)
        self.register_buffer("attn_mask", neighbour_mask(height, width, neighbour), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform weights and zero biases for linear/conv layers (attention in-projections keep PyTorch's
        xavier init), BatchNorm (1, 0); the positional tables keep their U(0, 1) init."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def reconstruct(self, features: torch.Tensor, prompt: torch.Tensor, jitter: float = 0.0,
                    prompt_index: torch.Tensor | None = None) -> torch.Tensor:
        """features ``[B, 272, h, w]``, prompt features ``[P, 272, h, w]`` → reconstructed features
        ``[B, 272, h, w]``. Target b uses prompt ``prompt_index[b]`` (``[B]`` int64), by default ``b mod P`` (then
        B must be a multiple of P). ``jitter > 0`` adds feature jitter to every token (targets and prompts) before
        the input projection."""
        batch, _, height, width = features.shape
        if (height, width) != self.feature_size or tuple(prompt.shape[-2:]) != self.feature_size:
            raise ValueError(f"features: expected feature maps of size {self.feature_size}, got "
                             f"{tuple(features.shape[-2:])} and prompt {tuple(prompt.shape[-2:])}")
        if prompt_index is None and (prompt.shape[0] < 1 or batch % prompt.shape[0]):
            raise ValueError(f"prompt: expected a number of prompts dividing the batch size {batch}, "
                             f"got {prompt.shape[0]}")
        if prompt_index is not None and (prompt_index.shape != (batch,) or prompt_index.dtype != torch.long or
                                         (batch and not 0 <= int(prompt_index.min()) <= int(prompt_index.max())
                                          < prompt.shape[0])):
            raise ValueError(f"prompt_index: expected {batch} int64 indices in [0, {prompt.shape[0]})")
        tokens = torch.cat([features, prompt]).flatten(2).permute(2, 0, 1)  # [N, B + P, 272]
        if jitter > 0:
            tokens = feature_jitter(tokens, jitter)
        tokens = self.input_proj(tokens)
        out = self.transformer(tokens[:, :batch], tokens[:, batch:], self.pos_embed(), self.attn_mask, prompt_index)
        return self.output_proj(out).permute(1, 2, 0).reshape(batch, -1, height, width)

    def forward(self, features: torch.Tensor, prompt: torch.Tensor, jitter: float = 0.0,
                prompt_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (reconstruction ``[B, 272, h, w]``, refiner logits on ``|F - F_hat|`` ``[B, 1, 4h, 4w]``)."""
        reconstruction = self.reconstruct(features, prompt, jitter, prompt_index)
        return reconstruction, self.seghead((reconstruction - features).abs())
