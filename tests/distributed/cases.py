"""Inputs shared by the torchrun worker and the single-process side of tests/distributed (same seeds, same data)."""

from __future__ import annotations

import torch

BANK_ROWS, BANK_DIM = 37, 13  # odd: the two shards differ in size
METRICS = ("l2", "cosine", "ip")
KCENTER_ROWS, KCENTER_DIM = 53, 20
KCENTER_CASES = (
    dict(n_select=10, projection_dim=8, seed=3),
    dict(ratio=0.3, projection_dim=None, start_index=40),
    dict(n_select=7, projection_dim=None, init=True),
)
DMAD_OPTIONS = dict(backbone="efficientnet_lite0", image_size=64, embed_dim=32, hidden=32, coreset_ratio=0.25,
                    n_textures=2, batch_size=4, progress=False)
DMAD_TRAIN = dict(epochs=1, batch_size=64, noise_std=1.5)  # one step: the batch holds every training image
REDI_OPTIONS = dict(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1, batch_size=4,
                    stage1_epochs=1, stage2_epochs=1)
ONENIP_OPTIONS = dict(img_size=64, hidden_dim=32, heads=2, ffn_dim=64, encoder_depth=1, decoder_depth=1)


def bank_rows() -> torch.Tensor:
    rows = torch.randn(BANK_ROWS, BANK_DIM, generator=torch.Generator().manual_seed(0))
    rows[30] = rows[5]  # an exact duplicate on the other shard: the tie must keep the lower global index
    return rows


def queries(rank: int) -> torch.Tensor:
    """Different queries per rank (and a different count), one duplicating bank row 5."""
    q = torch.randn(7 + 4 * rank, BANK_DIM, generator=torch.Generator().manual_seed(100 + rank))
    q[0] = bank_rows()[5]
    return q


def take_indices(rank: int) -> torch.Tensor:
    return torch.randint(BANK_ROWS, (3 + rank, 2), generator=torch.Generator().manual_seed(200 + rank))


def kcenter_features() -> torch.Tensor:
    return torch.randn(KCENTER_ROWS, KCENTER_DIM, generator=torch.Generator().manual_seed(1))


def kcenter_init() -> torch.Tensor:
    return torch.rand(KCENTER_ROWS, generator=torch.Generator().manual_seed(2)) + 0.5


def redi_images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=40, mode="bilinear")
    return (base + 0.05 * torch.rand(4, 3, 40, 40, generator=g)).clamp(0, 1)


def redi_validation() -> torch.Tensor:
    """Normal images for ReDi's thresholds, so that all four of :func:`redi_images` train (a held-out share would
    leave a rank a one-image batch, which BatchNorm refuses)."""
    return redi_images()[:2]


def onenip_images() -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return {"a": [torch.rand(3, 64, 64, generator=g) for _ in range(4)],
            "b": [torch.rand(3, 64, 64, generator=g) for _ in range(4)]}


def metauas_pairs():
    from ad_fast.models.metauas.pairs import ChangePairDataset

    g = torch.Generator().manual_seed(0)
    return ChangePairDataset([torch.rand(3, 64, 64, generator=g) for _ in range(4)], img_size=64, augment=None)


class Linear(torch.nn.Module):
    """A BatchNorm-free model: one DDP step over a split batch must equal the single-process step exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(6, 3)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((self.layer(x) - y) ** 2).mean()


def linear_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4)
    return torch.randn(11, 6, generator=g), torch.randn(11, 3, generator=g)
