"""ReDi losses: recovery (L2 + MSGMS, stage 1) and discrimination (cosine L_D + self-correlation L_S, stage 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_GMS_C = 0.0026


def _median3(x: torch.Tensor) -> torch.Tensor:
    """3x3 median filter with zero padding, same size (kornia ``MedianBlur((3, 3))``). x: [B, 1, H, W]."""
    patches = F.unfold(x, 3, padding=1)  # [B, 9, H*W]
    return patches.median(dim=1).values.view_as(x)


def _gradient_magnitude(gray: torch.Tensor) -> torch.Tensor:
    """Prewitt gradient magnitude (valid convolution) of a median-filtered gray image [B, 1, H, W]."""
    gx = gray.new_tensor([[-1.0, 0.0, 1.0]] * 3) / 3.0
    gy = gray.new_tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]) / 3.0
    kernels = torch.stack([gx, gy]).unsqueeze(1)  # [2, 1, 3, 3]
    grads = F.conv2d(_median3(gray), kernels)
    return grads.pow(2).sum(dim=1, keepdim=True).sqrt()


def msgms_loss(x: torch.Tensor, y: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient-magnitude-similarity loss (RIAD): mean over scales of mean(1 - GMS).

    x, y: Tensor[B, C, H, W] images in the same value range; scale s uses 2**s average pooling.
    Returns a scalar.
    """
    gx, gy = x.mean(dim=1, keepdim=True), y.mean(dim=1, keepdim=True)
    total = x.new_zeros(())
    for scale in range(scales):
        if scale:
            gx, gy = F.avg_pool2d(gx, 2), F.avg_pool2d(gy, 2)
        mx, my = _gradient_magnitude(gx), _gradient_magnitude(gy)
        gms = (2 * mx * my + _GMS_C) / (mx.pow(2) + my.pow(2) + _GMS_C)
        total = total + (1 - gms).mean()
    return total / scales


def recovery_loss(x: torch.Tensor, y: torch.Tensor, msgms_weight: float = 1.0) -> torch.Tensor:
    """L_Rec = MSE(x, y) + λ_M · MSGMS(x, y); x, y: Tensor[B, 3, H, W] in [-1, 1]."""
    return F.mse_loss(y, x) + msgms_weight * msgms_loss(x, y)


def cosine_loss(feats_x: list[torch.Tensor], feats_y: list[torch.Tensor]) -> torch.Tensor:
    """L_D: mean over levels and samples of 1 - cos(vec(F_X^i), vec(F_Y^i)), vec flattening C·H·W."""
    per_level = [1 - F.cosine_similarity(fx.flatten(1), fy.flatten(1), dim=1).mean() for fx, fy in zip(feats_x, feats_y)]
    return torch.stack(per_level).mean()


def _gram_difference_sq_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖aᵀa − bᵀb‖_F² per sample for a, b: Tensor[B, c, n], without an n×n matrix when n > c.

    With s = a + b and d = a − b, aᵀa − bᵀb = ½(sᵀd + dᵀs), hence
    ‖aᵀa − bᵀb‖_F² = ½(⟨s sᵀ, d dᵀ⟩ + tr(P P)) with P = s dᵀ,
    three c×c products. Each term is quadratic in d, so there is no cancellation of large terms when
    b ≈ a (the plain identity ‖a aᵀ‖² + ‖b bᵀ‖² − 2‖a bᵀ‖² loses about 4 digits there in float32).
    When n <= c the n×n difference is no larger than the c×c products and is formed directly.
    """
    if a.shape[-1] <= a.shape[-2]:
        diff = a.transpose(1, 2) @ a - b.transpose(1, 2) @ b
        return diff.pow(2).sum(dim=(1, 2))
    s, d = a + b, a - b
    ss = s @ s.transpose(1, 2)
    dd = d @ d.transpose(1, 2)
    p = s @ d.transpose(1, 2)
    return 0.5 * ((ss * dd).sum(dim=(1, 2)) + (p * p.transpose(1, 2)).sum(dim=(1, 2)))


def self_correlation_loss(feats_x: list[torch.Tensor], feats_y: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """L_S = (1/n) Σ_i mean_b ‖g_X^i − g_Y^i‖_F with g = F̂ᵀF̂ ∈ R^{hw×hw}, F̂ = softmax over channels of F^i.

    feats_x, feats_y: lists of Tensor[B, C_i, H_i, W_i]. The hw×hw Gram matrices are never formed when hw > C
    (see :func:`_gram_difference_sq_norm`); the norm is clamped at ``eps`` so its gradient stays finite at 0.
    """
    per_level = []
    for fx, fy in zip(feats_x, feats_y):
        a = fx.flatten(2).softmax(dim=1)
        b = fy.flatten(2).softmax(dim=1)
        sq = _gram_difference_sq_norm(a, b).clamp_min(eps * eps)
        per_level.append(sq.sqrt().mean())
    return torch.stack(per_level).mean()


def self_correlation_loss_naive(feats_x: list[torch.Tensor], feats_y: list[torch.Tensor]) -> torch.Tensor:
    """L_S by its definition, materialising every hw×hw Gram matrix (test oracle; memory O(B·(hw)²))."""
    per_level = []
    for fx, fy in zip(feats_x, feats_y):
        a = fx.flatten(2).softmax(dim=1)
        b = fy.flatten(2).softmax(dim=1)
        g_x = torch.einsum("bci,bcj->bij", a, a)
        g_y = torch.einsum("bci,bcj->bij", b, b)
        per_level.append(torch.linalg.matrix_norm(g_x - g_y).mean())
    return torch.stack(per_level).mean()


def discrimination_loss(feats_x: list[torch.Tensor], feats_y: list[torch.Tensor], self_corr_weight: float = 1.0) -> torch.Tensor:
    """L_Dis = L_D + λ_S · L_S."""
    loss = cosine_loss(feats_x, feats_y)
    if self_corr_weight:
        loss = loss + self_corr_weight * self_correlation_loss(feats_x, feats_y)
    return loss
