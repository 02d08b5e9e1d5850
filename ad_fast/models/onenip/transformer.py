"""Reconstruction transformer: post-norm encoder shared by target and prompt, then one of four decoders.

Decoders (``decoder_variant``): the release's bidirectional prompt/target decoder (``"v2_fixed"``, ``"v1_paper"``)
and, for the paper's Tab. 4a ablations, UniAD's layer-wise query decoder (``"uniad_query"``, Eq. 1) and the
unidirectional static-prompt decoder (``"unidirectional"``, Eq. 2).

Tensors are sequence-first, ``[N, B, d]`` (N = h·w tokens in raster order), with ``pos`` ``[N, 1, d]`` added to
queries and keys (never to values). Module names follow the release so its checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RELEASE_DECODER_VARIANTS = ("v2_fixed", "v1_paper")  # bidirectional: the release's checkpoints hold these
DECODER_VARIANTS = RELEASE_DECODER_VARIANTS + ("uniad_query", "unidirectional")


def _attend(attn: nn.MultiheadAttention, query: torch.Tensor, source: torch.Tensor, pos: torch.Tensor,
            mask: torch.Tensor | None) -> torch.Tensor:
    """``attn(Q = query + pos, K = source + pos, V = source)`` with an optional boolean mask (True = forbidden)."""
    return attn(query + pos, source + pos, source, attn_mask=mask, need_weights=False)[0]


def _feed_forward(x: torch.Tensor, linear1: nn.Linear, linear2: nn.Linear, dropout: nn.Dropout) -> torch.Tensor:
    """DETR feed-forward ``W2 · Dropout(ReLU(W1·x + b1)) + b2`` of ``[..., d]``."""
    return linear2(dropout(F.relu(linear1(x))))


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
        return self.norm2(x + self.dropout(_feed_forward(x, self.linear1, self.linear2, self.dropout)))


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

    uses_prompt = True

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


class QueryLayer(nn.Module):
    """One block of UniAD's layer-wise query decoder (post-norm, both attentions neighbour-masked):

    ``q' = LN1(q + A(q, x_e)); x = LN2(q' + A(q', x_d)); x_d' = LN3(x + FFN(x))`` with ``A(Q, S)`` the attention
    of ``Q`` over source ``S`` (Eq. 1 with the residuals, norms and FFN the paper leaves out).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.attn_query_to_encoded = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.attn_query_to_decoded = nn.MultiheadAttention(dim, heads, dropout=dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, encoded: torch.Tensor, decoded: torch.Tensor, pos: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """query q, encoded target x_e and previous output x_d, each ``[N, B, d]`` → next x_d ``[N, B, d]``."""
        query = self.norm1(query + self.dropout(_attend(self.attn_query_to_encoded, query, encoded, pos, mask)))
        x = self.norm2(query + self.dropout(_attend(self.attn_query_to_decoded, query, decoded, pos, mask)))
        return self.norm3(x + self.dropout(_feed_forward(x, self.linear1, self.linear2, self.dropout)))


class QueryDecoder(nn.Module):
    """Query decoder of the ablations: ``x_d^0 = x_e``, ``x_d^{i+1} = layer_i(q^i, x_e, x_d^i)``, output
    ``LN(x_d^L)``; x_e stays fixed across the blocks.

    Args:
        num_queries: N for UniAD's decoder: ``q^i`` is a learned ``[N, d]`` table per block (``queries[i]``,
            N(0, 1) init) and the prompt is not used; ``None`` for the static-prompt decoder (Eq. 2): ``q^i = p_e``,
            the encoded prompt, unchanged in every block.
    """

    def __init__(self, depth: int, dim: int, heads: int, ffn_dim: int, dropout: float, num_queries: int | None):
        super().__init__()
        self.layers = nn.ModuleList(QueryLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))
        self.queries = None if num_queries is None else nn.ParameterList(
            nn.Parameter(torch.randn(num_queries, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.uses_prompt = num_queries is None

    def forward(self, prompt: torch.Tensor | None, image: torch.Tensor, pos: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """prompt p_e ``[N, B, d]`` (ignored with learned queries), image x_e ``[N, B, d]`` → ``[N, B, d]``."""
        decoded = image
        for i, layer in enumerate(self.layers):
            query = prompt if self.queries is None else self.queries[i].unsqueeze(1).expand(-1, image.shape[1], -1)
            decoded = layer(query, image, decoded, pos, mask)
        return self.norm(decoded)


class Transformer(nn.Module):
    """Encoder over ``[targets; prompts]`` (independently per sequence), then the decoder pairing target b with
    prompt ``prompt_index[b]`` (default ``b mod P``), so a prompt shared by several targets is encoded once.

    ``variant``: one of :data:`DECODER_VARIANTS`; ``"uniad_query"`` needs ``num_tokens`` (N) for its learned
    queries and encodes no prompt.
    """

    def __init__(self, dim: int = 256, heads: int = 8, ffn_dim: int = 1024, encoder_depth: int = 4,
                 decoder_depth: int = 4, dropout: float = 0.1, variant: str = "v2_fixed",
                 num_tokens: int | None = None):
        super().__init__()
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"decoder_variant: expected one of {DECODER_VARIANTS}, got {variant!r}")
        if variant == "uniad_query" and num_tokens is None:
            raise ValueError("num_tokens: the 'uniad_query' decoder needs the number of tokens for its queries")
        self.encoder = Encoder(encoder_depth, dim, heads, ffn_dim, dropout)
        if variant in RELEASE_DECODER_VARIANTS:
            self.decoder = Decoder(decoder_depth, dim, heads, ffn_dim, dropout, variant)
        else:
            self.decoder = QueryDecoder(decoder_depth, dim, heads, ffn_dim, dropout,
                                        num_tokens if variant == "uniad_query" else None)

    def forward(self, image: torch.Tensor, prompt: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None,
                prompt_index: torch.Tensor | None = None) -> torch.Tensor:
        """image ``[N, B, d]``, prompt ``[N, P, d]``, prompt_index ``[B]`` int64 in [0, P) → reconstruction tokens
        ``[N, B, d]``. A decoder that uses no prompt (``"uniad_query"``) gets neither prompt nor index."""
        if not self.decoder.uses_prompt:
            return self.decoder(None, self.encoder(image, pos, mask), pos, mask)
        batch, prompts = image.shape[1], prompt.shape[1]
        one_each = prompt_index is None and prompts == batch  # decided from shapes: an exported graph stays static
        if prompt_index is None:
            prompt_index = torch.arange(batch, device=image.device) % prompts
        encoded = self.encoder(torch.cat([image, prompt], dim=1), pos, mask)
        image, prompt = encoded[:, :batch], encoded[:, batch:]
        if not one_each and (prompts != batch or
                             not torch.equal(prompt_index, torch.arange(batch, device=prompt_index.device))):
            prompt = prompt.index_select(1, prompt_index)
        return self.decoder(prompt, image, pos, mask)
