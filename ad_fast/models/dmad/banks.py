"""DMAD's dual memory bank (paper §3.2): normal coreset M_n; abnormal bank M_a = M_o ∪ M_as ∪ M_p."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...ops import kcenter_greedy
from ...ops.kcenter_greedy import random_projection
from .encoder import PatchFeatureEncoder
from .inputs import iter_batches

_PROJECT_CHUNK = 65536


@torch.no_grad()
def extract_features(encoder: PatchFeatureEncoder, items: list, size: tuple[int, int], batch_size: int,
                     store_dtype: torch.dtype = torch.float32, desc: str = "features", progress: bool = True,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch features of every image, streamed batch by batch into one preallocated store.

    Only ``batch_size`` images and their backbone activations are alive at a time; the store holds
    ``len(items) · N · C`` values in ``store_dtype`` (float16 halves it).

    Returns:
        (Tensor[n_images, N, C] in ``store_dtype`` on CPU, patch grid (H0, W0)).
    """
    store, grid = None, None
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start, batch, _ in iter_batches(items, size, batch_size):
            feats, grid = encoder(batch.to(device))
            if store is None:
                store = torch.empty((len(items), *feats.shape[1:]), dtype=store_dtype)
            store[start : start + feats.shape[0]] = feats.to("cpu", store_dtype)
            bar.update(feats.shape[0])
    return store, grid


def coreset_input(features: torch.Tensor, seed: int = 0, projection_dim: int = 128, n_starts: int = 10,
                  device: torch.device | str | None = None,
                  basis: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`coreset_indices` hands the greedy k-center search: projected rows and starting min-distances.

    Rows are projected to ``projection_dim`` (Gaussian JL matrix, streamed in chunks); the running min-distance
    starts as the mean distance to ``n_starts`` random rows (PatchCore's ``ApproximateGreedyCoresetSampler``;
    those rows are not selected).

    Args:
        features (Tensor[M, C]): any float dtype; streamed in chunks to ``device`` (default: its own) for the
            projection, so only the ``[M, projection_dim]`` projection lives there.
        basis (Tensor[C, E]) or None: ``features @ basis`` are the rows meant (isometric encoder coordinates, see
            :class:`~.encoder.PatchFeatureEncoder`); they are projected by the same JL matrix as E-d rows, folded
            into one ``[C, projection_dim]`` matrix, so the picks are those of the E-d features.
    Returns:
        (float32 Tensor[M, projection_dim], float32 Tensor[M]) on ``device``.
    """
    rows = features.shape[0]
    device = features.device if device is None else torch.device(device)
    if basis is None:
        weight = random_projection(features.shape[1], projection_dim, seed)
    else:
        weight = (basis @ random_projection(basis.shape[1], projection_dim, seed).double()).float()
    weight = weight.to(device)
    z = torch.cat([features[s : s + _PROJECT_CHUNK].to(device, torch.float32) @ weight
                   for s in range(0, rows, _PROJECT_CHUNK)])
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randperm(rows, generator=generator)[: min(n_starts, rows)].to(z.device)
    return z, torch.cdist(z, z[starts]).mean(1)


def coreset_indices(features: torch.Tensor, ratio: float, seed: int = 0, projection_dim: int = 128,
                    n_starts: int = 10, progress: bool = True, device: torch.device | str | None = None,
                    basis: torch.Tensor | None = None) -> torch.Tensor:
    """PatchCore's approximate greedy coreset: int64 indices of ``int(M · ratio)`` rows of ``features``.

    The greedy k-center picks of :func:`ad_fast.ops.kcenter_greedy` over :func:`coreset_input` (projected rows,
    min-distances starting from the mean distance to ``n_starts`` random rows), in one call (the progress bar
    advances once, at the end).

    Args:
        features (Tensor[M, C]): any float dtype; streamed in chunks to ``device`` (default: its own) for the
            projection, so only the ``[M, projection_dim]`` projection lives there.
        basis: as :func:`coreset_input`.
    """
    rows = features.shape[0]
    count = int(rows * ratio)
    if count == 0:
        return torch.empty(0, dtype=torch.long)
    if ratio >= 1.0:
        return torch.arange(rows)
    z, min_dist = coreset_input(features, seed, projection_dim, n_starts, device, basis)
    with tqdm(total=count, desc="coreset", unit="patch", disable=not progress, leave=False) as bar:
        picks = kcenter_greedy(z, n_select=count, projection_dim=None, init_distances=min_dist)
        bar.update(count)
    return picks.cpu()


def fuse_outliers(texture_features: torch.Tensor, normal_features: torch.Tensor, beta: float, seed: int = 0) -> torch.Tensor:
    """Outlier-fused pseudo anomalies (Eq. 4): β·F(texture) + (1-β)·F(random normal image), patch by patch.

    Args:
        texture_features (Tensor[T, N, C]), normal_features (Tensor[n, N, C]).
    Returns:
        Tensor[T·N, C] float32.
    """
    generator = torch.Generator().manual_seed(seed)
    partners = torch.randint(normal_features.shape[0], (texture_features.shape[0],), generator=generator)
    fused = beta * texture_features.float() + (1.0 - beta) * normal_features[partners].float()
    return fused.reshape(-1, fused.shape[-1])


def filter_anomalous(features: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int], threshold: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter (Eq. 2): patches whose bilinearly downscaled mask value exceeds ``threshold``.

    Args:
        features (Tensor[A, N, C]), masks (Tensor[A, 1, H, W]) binary.
    Returns:
        (Tensor[N_f, C] float32 rows, int64 Tensor[N_f] image index of each row).
    """
    small = F.interpolate(masks.float(), size=grid, mode="bilinear", align_corners=False).flatten(1)  # [A, N]
    image_idx, patch_idx = torch.nonzero(small > threshold, as_tuple=True)
    return features[image_idx, patch_idx].float(), image_idx


def anomaly_center_samples(seen: torch.Tensor, std: float = 0.01, seed: int = 0) -> torch.Tensor:
    """Anomaly Center Sampling (M_p): the mean seen-anomaly feature plus N(0, std²) noise, ``len(seen)`` rows."""
    generator = torch.Generator().manual_seed(seed)
    center = seen.float().mean(0, keepdim=True)
    return center + std * torch.randn(seen.shape, generator=generator)
