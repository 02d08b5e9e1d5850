"""Prompt retrieval, the one copy: a bank of labelled rows searched by cosine similarity (``ops.knn``).

MetaUAS's prompt pool (pooled level-5 features), OneNIP's (averaged stride-16 features) and ReDi's (pooled backbone
features) all retrieve through :meth:`PromptBank.search`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...ops import knn


class PromptBank:
    """Rows ``Tensor[N, D]`` with optional class labels (one per row), searched by cosine similarity."""

    def __init__(self, rows: torch.Tensor, labels: Sequence[str | None] | None = None):
        if rows.dim() != 2:
            raise ValueError(f"rows: expected a Tensor[N, D], got shape {tuple(rows.shape)}")
        labels = [None] * rows.shape[0] if labels is None else list(labels)
        if len(labels) != rows.shape[0]:
            raise ValueError(f"labels: expected {rows.shape[0]} labels (one per row), got {len(labels)}")
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def classes(self) -> list[str]:
        """The distinct non-None labels, sorted."""
        return sorted({label for label in self.labels if label is not None})

    def search(self, queries: torch.Tensor, k: int = 1, label: str | None = None,
               exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar rows of each query, computed on the queries' device in float32.

        Args:
            queries (Tensor[B, D]): query features.
            k: rows per query. label: search only rows of this class.
            exclude (Tensor[B], int64) or None: one row each query must not get (its own index in training;
                ``k = 1`` and no ``label`` only).
        Returns:
            (similarity Tensor[B, k] float32, index Tensor[B, k] int64 into the bank), most similar first.
        Raises:
            ValueError: an empty bank, an unknown ``label``, ``k`` out of range, or a bad ``exclude``.
        """
        if len(self) == 0:
            raise ValueError("pool: the prompt pool is empty; add normal images first")
        candidates = None
        if label is not None:
            candidates = torch.tensor([i for i, name in enumerate(self.labels) if name == label], dtype=torch.long)
            if candidates.numel() == 0:
                raise ValueError(f"label: no prompt of class {label!r} in the pool (classes: {self.classes})")
        count = len(self) if candidates is None else int(candidates.numel())
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= count:
            raise ValueError(f"k: expected an int in [1, {count}], got {k!r}")
        rows = self.rows if candidates is None else self.rows[candidates.to(self.rows.device)]
        rows = rows.to(queries.device, torch.float32)
        queries = queries.float()
        if exclude is None:
            distance, position = knn(queries, rows, k, metric="cosine")
            index = position if candidates is None else candidates.to(position.device)[position]
            return 1.0 - distance, index
        return self._search_excluding(queries, rows, exclude, k, label)

    @staticmethod
    def _search_excluding(queries: torch.Tensor, rows: torch.Tensor, exclude: torch.Tensor, k: int,
                          label: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        if k != 1 or label is not None:
            raise ValueError("exclude: supported with k=1 and no label only")
        if exclude.shape != (queries.shape[0],) or exclude.dtype != torch.int64:
            raise ValueError(f"exclude: expected an int64 tensor of shape ({queries.shape[0]},), got {exclude.dtype} "
                             f"{tuple(exclude.shape)}")
        if rows.shape[0] < 2:
            raise ValueError(f"bank: excluding the query itself needs at least 2 rows, got {rows.shape[0]}")
        if bool(((exclude < 0) | (exclude >= rows.shape[0])).any()):
            raise ValueError(f"exclude: indices must lie in [0, {rows.shape[0]}), got {exclude.tolist()}")
        # The excluded row is at most one of the two nearest; take the first of the two that is not excluded.
        distance, position = knn(queries, rows, 2, metric="cosine")
        pick = (position[:, 0] == exclude.to(position.device)).long().unsqueeze(1)
        return 1.0 - distance.gather(1, pick), position.gather(1, pick)
