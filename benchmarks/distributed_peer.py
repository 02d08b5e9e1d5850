"""The data of bench_distributed.py, and its rank 1: joins rank 0's process group and repeats, in lockstep, the
collective calls rank 0 times.

    python benchmarks/distributed_peer.py PORT   (started by bench_distributed.py; gloo over TCP on 127.0.0.1)
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from bench_utils import pick

BANK_ROWS, DIM, QUERIES, K = pick((200_000, 128, 1024, 1), (20_000, 32, 256, 1))
BANK_CHUNK = 10_000  # rows are drawn chunk by chunk, so a rank draws only its shard's chunks
IMAGES, IMAGE_SIZE, RANK_BATCH = pick((32, 192, 4), (4, 64, 2))
STOP, SEARCH, SCORE = 0, 1, 2


def bank_rows(start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of the benchmark bank (N(0, 1) float32, chunks seeded by their index)."""
    first, last = start // BANK_CHUNK, (end - 1) // BANK_CHUNK
    rows = torch.cat([torch.randn(BANK_CHUNK, DIM, generator=torch.Generator().manual_seed(c))
                      for c in range(first, last + 1)])
    return rows[start - first * BANK_CHUNK : end - first * BANK_CHUNK]


def queries() -> torch.Tensor:
    return torch.randn(QUERIES, DIM, generator=torch.Generator().manual_seed(10**6))


def scoring_model_and_images():
    """A training-free DMAD on efficientnet_lite0's ImageNet weights, fitted on 4 generated images, and the
    images to score."""
    from ad_fast import DMAD

    generator = torch.Generator().manual_seed(0)
    train = torch.rand(4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    model = DMAD(backbone="efficientnet_lite0", mode="memory_bank", image_size=IMAGE_SIZE, embed_dim=256,
                 coreset_ratio=0.1, batch_size=RANK_BATCH, progress=False).fit(train)
    return model, torch.rand(IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def command(value: int = STOP) -> int:
    """Rank 0 sends ``value``; every rank returns it."""
    tensor = torch.tensor([value])
    dist.broadcast(tensor, 0)
    return int(tensor)


def main(port: int) -> None:
    from ad_fast.distributed import ShardedMemoryBank, predict_parallel
    from ad_fast.distributed.collectives import block_range
    from ad_fast.ops import MemoryBank

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
    start, end = block_range(BANK_ROWS)
    bank = ShardedMemoryBank(MemoryBank(DIM).add(bank_rows(start, end)), torch.arange(start, end), BANK_ROWS)
    model, images = scoring_model_and_images()
    q = queries()
    while (op := command()) != STOP:
        if op == SEARCH:
            bank.search(q, K)
        elif op == SCORE:
            predict_parallel(model, images, RANK_BATCH)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]))
