"""Prompt retrieval (spec §2.3, §9.2): X⁺ is the normal training image whose pooled backbone feature has the
highest cosine similarity to the query's, never the query itself during training."""

from __future__ import annotations

import torch

from ...ops import knn


def retrieve_prompts(
    query: torch.Tensor, bank: torch.Tensor, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 cosine neighbour of each query row in the bank, optionally excluding one bank row per query.

    Args:
        query (Tensor[B, D]): pooled features of the queries.
        bank (Tensor[N, D]): pooled features of the normal training images.
        exclude (Tensor[B], int64) or None: bank row each query must not get (its own index in training).
    Returns:
        indices (Tensor[B], int64) into the bank and their cosine similarities (Tensor[B]).
    Raises:
        ValueError: ``exclude`` is given but the bank has fewer than 2 rows, or its shape/range is wrong.
    """
    if exclude is None:
        distances, indices = knn(query, bank, 1, metric="cosine")
        return indices[:, 0], 1.0 - distances[:, 0]
    if exclude.shape != (query.shape[0],) or exclude.dtype != torch.int64:
        raise ValueError(f"exclude: expected an int64 tensor of shape ({query.shape[0]},), got {exclude.dtype} {tuple(exclude.shape)}")
    if bank.shape[0] < 2:
        raise ValueError(f"bank: excluding the query itself needs at least 2 normal images, got {bank.shape[0]}")
    if bool(((exclude < 0) | (exclude >= bank.shape[0])).any()):
        raise ValueError(f"exclude: indices must lie in [0, {bank.shape[0]}), got {exclude.tolist()}")
    # The excluded row is at most one of the two nearest; take the first of the two that is not excluded.
    distances, indices = knn(query, bank, 2, metric="cosine")
    first_is_self = indices[:, 0] == exclude.to(indices.device)
    pick = first_is_self.long().unsqueeze(1)
    return indices.gather(1, pick)[:, 0], 1.0 - distances.gather(1, pick)[:, 0]
