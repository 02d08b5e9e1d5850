"""DMAD training (paper §3.3, Eq. 12): hinge loss on normal, Gaussian-noised and seen-anomaly representations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...distributed import ddp, setup
from ...distributed.collectives import map_blocks
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


def hinge_loss(scores: torch.Tensor, n_normal: int, n_noise: int, cfg: TrainConfig,
               weights: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Eq. 12: mean max(0, m - Ψ) over normals + λ1 mean max(0, m + Ψ) over noised + λ2 over seen anomalies.

    ``weights`` scale the normal + noised terms and the seen term (a rank's share under DDP, see :func:`train`).
    """
    loss = F.relu(cfg.margin - scores[:n_normal]).mean()
    loss = loss + cfg.lambda_noise * F.relu(cfg.margin + scores[n_normal : n_normal + n_noise]).mean()
    if weights[0] != 1.0:
        loss = loss * weights[0]
    seen = scores[n_normal + n_noise :]
    if seen.numel() and cfg.lambda_seen:
        seen_term = cfg.lambda_seen * F.relu(cfg.margin + seen).mean()
        loss = loss + (seen_term * weights[1] if weights[1] != 1.0 else seen_term)
    return loss


def train(enhancer: KnowledgeEnhancer, mapper: ScoreMapper, features: torch.Tensor, normal: MemoryBank,
          abnormal: MemoryBank, cfg: TrainConfig, seen: torch.Tensor | None = None,
          seen_image: torch.Tensor | None = None, progress: bool = True) -> list[float]:
    """Train P_θ (+ K/V) and Ψ on cached normal features; the banks and the encoder stay frozen.

    The 1-NN indices of every training patch are constants (frozen encoder, fixed banks, no augmentation),
    so they are computed once before the first epoch.

    Under ``torchrun`` every rank holds the same features and banks and draws the same batches and noise; it
    computes the 1-NN indices of its block of images (then all ranks exchange them) and the loss of its share of
    each batch (:func:`ad_fast.distributed.ddp.local_share`), and DDP averages the gradients: a step is the
    one-process step on the whole batch up to Ψ's BatchNorm statistics, which are per rank. At world size 1
    nothing changes.

    Args:
        features (Tensor[n, N, C]): normal patch features (any float dtype).
        seen (Tensor[N_f, C], optional): seen-anomaly patch features after the mask filter, with
            ``seen_image`` (int64 Tensor[N_f]) their source image; each step takes the patches of
            ``batch_size`` anomaly images drawn from a reshuffled cycle (as the candidate release).
    Returns:
        the mean loss of each epoch (averaged over the ranks).
    """
    n, patches, dim = features.shape
    device = normal.rows.device
    setup(device)  # joins torchrun's process group, if launched by it
    flat = features.reshape(-1, dim)
    idx_n = map_blocks(lambda rows: nearest_rows(normal, rows), flat).reshape(n, patches)
    idx_a = map_blocks(lambda rows: nearest_rows(abnormal, rows), flat).reshape(n, patches)
    has_seen = seen is not None and len(seen) > 0
    if has_seen:
        seen_n, seen_a = nearest_rows(normal, seen), nearest_rows(abnormal, seen)
        n_seen_images = int(seen_image.max()) + 1
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW([
        {"params": list(enhancer.parameters()), "lr": cfg.lr},
        {"params": list(mapper.parameters()), "lr": cfg.mapper_lr, "weight_decay": cfg.mapper_weight_decay},
    ])

    def step_loss(ids: torch.Tensor, noise: torch.Tensor, rows: torch.Tensor, weights: tuple[float, float]
                  ) -> torch.Tensor:
        q = features[ids].to(device)
        o_n = representation(enhancer, q, normal, abnormal, idx_n[ids], idx_a[ids])
        parts = [o_n, o_n + noise.to(device).repeat(1, 3)]
        if len(rows):
            parts.append(representation(enhancer, seen[rows][None].to(device), normal, abnormal,
                                        seen_n[rows][None], seen_a[rows][None]))
        return hinge_loss(mapper(torch.cat(parts)), o_n.shape[0], o_n.shape[0], cfg, weights)

    network = ddp.wrap(ddp.LossModule(nn.ModuleList([enhancer, mapper]), step_loss), device,
                       find_unused_parameters=enhancer.attention == "per_patch")  # the key projection is unused there
    enhancer.train()
    mapper.train()
    history, seen_order = [], torch.empty(0, dtype=torch.long)
    no_rows = torch.empty(0, dtype=torch.long)
    for _ in tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        total, steps = 0.0, 0
        for ids in torch.randperm(n, generator=generator).split(cfg.batch_size):
            noise = cfg.noise_std * torch.randn(len(ids) * patches, dim, generator=generator)
            rows = no_rows
            if has_seen:
                while len(seen_order) < cfg.batch_size:
                    seen_order = torch.cat([seen_order, torch.randperm(n_seen_images, generator=generator)])
                chosen, seen_order = seen_order[: cfg.batch_size], seen_order[cfg.batch_size :]
                rows = torch.nonzero(torch.isin(seen_image, chosen), as_tuple=True)[0]
            mine, image_weight = ddp.local_share(torch.arange(len(ids)))
            rows, seen_weight = ddp.local_share(rows)
            noise = noise.reshape(len(ids), patches, dim)[mine].reshape(-1, dim)
            loss = network(ids[mine], noise, rows, (image_weight, seen_weight))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        history.append(ddp.mean_over_ranks(total / max(steps, 1)))
    ddp.broadcast_state(mapper)  # BatchNorm statistics of each rank's last step differ: all ranks keep rank 0's
    enhancer.eval()
    mapper.eval()
    return history
