"""DMAD training (paper §3.3, Eq. 12): hinge loss on normal, Gaussian-noised and seen-anomaly representations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ...ops import MemoryBank
from .knowledge import KnowledgeEnhancer, ScoreMapper


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the paper's (§4.2) and SimpleNet's noise (σ = 0.015)."""

    epochs: int = 48
    batch_size: int = 32
    lr: float = 1e-4  # K/V linears and the projection P_θ (AdamW default weight decay 0.01)
    mapper_lr: float = 2e-4
    mapper_weight_decay: float = 1e-5
    noise_std: float = 0.015
    margin: float = 0.5
    lambda_noise: float = 1.0  # λ1: 1 unsupervised, 0.5 semi-supervised
    lambda_seen: float = 0.0  # λ2: 0 unsupervised, 15 semi-supervised
    seed: int = 0


def nearest_rows(bank: MemoryBank, queries: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """int64 index of the 1-NN (L2) bank row of every query row (Tensor[M, C]) -> Tensor[M]."""
    out = [bank.search(queries[s : s + chunk].to(bank.device, torch.float32), k=1)[1][:, 0]
           for s in range(0, queries.shape[0], chunk)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=bank.device)


def representation(enhancer: KnowledgeEnhancer, q: torch.Tensor, normal: MemoryBank, abnormal: MemoryBank,
                   idx_n: torch.Tensor, idx_a: torch.Tensor) -> torch.Tensor:
    """o for patches q (Tensor[B, N, C]) with precomputed 1-NN indices (int64 Tensor[B, N]) -> Tensor[B·N, 3C]."""
    nn_n = normal.rows[idx_n].float()
    nn_a = abnormal.rows[idx_a].float()
    o = enhancer(q.float(), nn_n, nn_a)
    return o.reshape(-1, o.shape[-1])


def hinge_loss(scores: torch.Tensor, n_normal: int, n_noise: int, cfg: TrainConfig) -> torch.Tensor:
    """Eq. 12: mean max(0, m - Ψ) over normals + λ1 mean max(0, m + Ψ) over noised + λ2 over seen anomalies."""
    loss = F.relu(cfg.margin - scores[:n_normal]).mean()
    loss = loss + cfg.lambda_noise * F.relu(cfg.margin + scores[n_normal : n_normal + n_noise]).mean()
    seen = scores[n_normal + n_noise :]
    if seen.numel() and cfg.lambda_seen:
        loss = loss + cfg.lambda_seen * F.relu(cfg.margin + seen).mean()
    return loss


def train(enhancer: KnowledgeEnhancer, mapper: ScoreMapper, features: torch.Tensor, normal: MemoryBank,
          abnormal: MemoryBank, cfg: TrainConfig, seen: torch.Tensor | None = None,
          seen_image: torch.Tensor | None = None, progress: bool = True) -> list[float]:
    """Train P_θ (+ K/V) and Ψ on cached normal features; the banks and the encoder stay frozen.

    The 1-NN indices of every training patch are constants (frozen encoder, fixed banks, no augmentation),
    so they are computed once before the first epoch.

    Args:
        features (Tensor[n, N, C]): normal patch features (any float dtype).
        seen (Tensor[N_f, C], optional): seen-anomaly patch features after the mask filter, with
            ``seen_image`` (int64 Tensor[N_f]) their source image; each step takes the patches of
            ``batch_size`` anomaly images drawn from a reshuffled cycle (as the candidate release).
    Returns:
        the mean loss of each epoch.
    """
    n, patches, dim = features.shape
    device = normal.rows.device
    flat = features.reshape(-1, dim)
    idx_n = nearest_rows(normal, flat).reshape(n, patches)
    idx_a = nearest_rows(abnormal, flat).reshape(n, patches)
    if seen is not None and len(seen):
        seen_n, seen_a = nearest_rows(normal, seen), nearest_rows(abnormal, seen)
        n_seen_images = int(seen_image.max()) + 1
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW([
        {"params": list(enhancer.parameters()), "lr": cfg.lr},
        {"params": list(mapper.parameters()), "lr": cfg.mapper_lr, "weight_decay": cfg.mapper_weight_decay},
    ])
    enhancer.train()
    mapper.train()
    history, seen_order = [], torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        total, steps = 0.0, 0
        for ids in torch.randperm(n, generator=generator).split(cfg.batch_size):
            q = features[ids].to(device)
            o_n = representation(enhancer, q, normal, abnormal, idx_n[ids], idx_a[ids])
            noise = cfg.noise_std * torch.randn(o_n.shape[0], dim, generator=generator).to(device)
            parts = [o_n, o_n + noise.repeat(1, 3)]
            if seen is not None and len(seen):
                while len(seen_order) < cfg.batch_size:
                    seen_order = torch.cat([seen_order, torch.randperm(n_seen_images, generator=generator)])
                chosen, seen_order = seen_order[: cfg.batch_size], seen_order[cfg.batch_size :]
                rows = torch.nonzero(torch.isin(seen_image, chosen), as_tuple=True)[0]
                if len(rows):
                    parts.append(representation(enhancer, seen[rows][None].to(device), normal, abnormal,
                                                seen_n[rows][None], seen_a[rows][None]))
            scores = mapper(torch.cat(parts))
            loss = hinge_loss(scores, o_n.shape[0], o_n.shape[0], cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        history.append(total / max(steps, 1))
    enhancer.eval()
    mapper.eval()
    return history
