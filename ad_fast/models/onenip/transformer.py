"""Reconstruction transformer: post-norm encoder shared by target and prompt, bidirectional prompt/target decoder.

Tensors are sequence-first, ``[N, B, d]`` (N = h·w tokens in raster order), with ``pos`` ``[N, 1, d]`` added to
queries and keys (never to values). Module names follow the release so its checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DECODER_VARIANTS = ("v2_fixed", "v1_paper")


def _attend(attn: nn.MultiheadAttention, query: torch.Tensor, source: torch.Tensor, pos: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """``attn(Q = query + pos, K = source + pos, V = source)`` with an optional boolean mask (True = forbidden)."""
    return attn(query + pos, source + pos, source, attn_mask=mask, need_weights=False)[0]


class EncoderLayer(nn.Module):
    """DETR post-norm layer: ``x = LN1(x + SA(x)); x = LN2(x + W2·ReLU(W1·x))`` (dropout after each sublayer)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.norm1(x + self.dropout(_attend(self.self_attn, x, x, pos, mask)))
        return self.norm2(x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class Encoder(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, mask)
        return x


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.relu(self.lin1(x)))


class BidirectionalLayer(nn.Module):
    """Prompt ← target cross-attention, prompt MLP, then target ← updated prompt cross-attention (post-norm).

    ``variant="v1_paper"`` reproduces the release's first decoder (the one behind the paper's numbers): the target
    update adds the prompt-MLP output instead of the target ← prompt attention, which then gets no gradient.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, variant: str):
        super().__init__()
        self.cross_attn_prompt_to_image = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.cross_attn_image_to_prompt = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.mlp = MLP(dim, ffn_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.variant = variant

    def forward(self, prompt: torch.Tensor, image: torch.Tensor, pos: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        prompt = self.norm1(prompt + self.dropout(_attend(self.cross_attn_prompt_to_image, prompt, image, pos, mask)))
        mlp_out = self.mlp(prompt)
        prompt = self.norm2(prompt + self.dropout(mlp_out))
        if self.variant == "v1_paper":
            update = mlp_out
        else:
            update = _attend(self.cross_attn_image_to_prompt, image, prompt, pos, mask)
        image = self.norm3(image + self.dropout(update))
        return prompt, image


class Decoder(nn.Module):
    """Bidirectional layers, then an unmasked final prompt ← target attention and LayerNorm on the prompt stream."""

    def __init__(self, depth: int, dim: int, heads: int, ffn_dim: int, dropout: float, variant: str):
        super().__init__()
        self.layers = nn.ModuleList(BidirectionalLayer(dim, heads, ffn_dim, dropout, variant) for _ in range(depth))
        self.final_attn_token_to_image = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, prompt: torch.Tensor, image: torch.Tensor, pos: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """prompt, image ``[N, B, d]`` → the updated prompt stream ``[N, B, d]`` (the reconstruction)."""
        for layer in self.layers:
            prompt, image = layer(prompt, image, pos, mask)
        final = _attend(self.final_attn_token_to_image, prompt, image, pos, None)
        return self.norm(prompt + self.dropout(final))


class Transformer(nn.Module):
    """Encoder over ``[targets; prompts]`` (independently per sequence), then the decoder pairing target b with
    prompt ``prompt_index[b]`` (default ``b mod P``), so a prompt shared by several targets is encoded once."""

    def __init__(self, dim: int = 256, heads: int = 8, ffn_dim: int = 1024, encoder_depth: int = 4,
                 decoder_depth: int = 4, dropout: float = 0.1, variant: str = "v2_fixed"):
        super().__init__()
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"decoder_variant: expected one of {DECODER_VARIANTS}, got {variant!r}")
        self.encoder = Encoder(encoder_depth, dim, heads, ffn_dim, dropout)
        self.decoder = Decoder(decoder_depth, dim, heads, ffn_dim, dropout, variant)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                prompt_index: torch.Tensor | None = None) -> torch.Tensor:
        """image ``[N, B, d]``, prompt ``[N, P, d]``, prompt_index ``[B]`` int64 in [0, P) → reconstruction tokens
        ``[N, B, d]``."""
        batch, prompts = image.shape[1], prompt.shape[1]
        if prompt_index is None:
            prompt_index = torch.arange(batch, device=image.device) % prompts
        encoded = self.encoder(torch.cat([image, prompt], dim=1), pos, mask)
        image, prompt = encoded[:, :batch], encoded[:, batch:]
        if prompts != batch or not torch.equal(prompt_index, torch.arange(batch, device=prompt_index.device)):
            prompt = prompt.index_select(1, prompt_index)
        return self.decoder(prompt, image, pos, mask)
