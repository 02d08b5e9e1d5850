"""Prompt retrieval (spec §2.3, §9.2): X⁺ is the normal training image whose pooled backbone feature has the
highest cosine similarity to the query's, never the query itself during training."""

from __future__ import annotations

import torch

from ..components.retrieval import PromptBank


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
    similarity, index = PromptBank(bank).search(query, 1, exclude=exclude)
    return index[:, 0], similarity[:, 0]
