"""Run under ``torchrun --nproc-per-node 2`` by test_torchrun.py: every distributed check in one launch.

Usage: worker.py OUT_DIR DATA_ROOT. Each rank writes ``OUT_DIR/rank{r}.pt`` (what it computed); the test compares
those with the same computations in one process. The CLI's evaluate and predict write under OUT_DIR/cli_*.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import cases
from ad_fast import DMAD, ReDi, ops
from ad_fast.distributed import (ShardedMemoryBank, ddp, kcenter_greedy_sharded, load_sharded, predict_parallel,
                                 save_sharded, setup, shard_banks)
from ad_fast.distributed.collectives import block_range


def bank_checks() -> dict:
    rank = torch.distributed.get_rank()
    whole = ops.MemoryBank(cases.BANK_DIM).add(cases.bank_rows())
    same = ShardedMemoryBank.from_bank(whole)  # every rank asks the same queries
    out = {"same_search": same.search(cases.queries(0), 5), "same_take": same.take(cases.take_indices(0))}
    bank = ShardedMemoryBank.from_bank(whole, same_queries=False)  # every rank asks its own
    out["shard"] = len(bank.shard)
    q = cases.queries(rank)
    for metric in cases.METRICS:
        for k in (1, 5, cases.BANK_ROWS):  # k = N: more than one shard holds
            out[f"search_{metric}_{k}"] = bank.search(q, k, metric)
    out["search_batched"] = bank.search(q[None].repeat(2, 1, 1), 3)
    out["search_empty"] = bank.search(q[:0] if rank == 1 else q, 2)
    out["take"] = bank.take(cases.take_indices(rank))
    out["gather"] = bank.gather().rows
    return out


def kcenter_checks() -> dict:
    start, end = block_range(cases.KCENTER_ROWS)
    features, init = cases.kcenter_features()[start:end], cases.kcenter_init()[start:end]
    out = {}
    for i, case in enumerate(cases.KCENTER_CASES):
        case = dict(case)
        if case.pop("init", False):
            case["init_distances"] = init
        out[f"kcenter_{i}"] = kcenter_greedy_sharded(features, return_radii=True, **case)
    return out


def linear_step() -> dict:
    """One SGD step of a BatchNorm-free model through ddp.wrap + LossModule + local_share."""
    model = cases.Linear()
    x, y = cases.linear_data()
    network = ddp.wrap(ddp.LossModule(model, lambda idx: model.loss(x[idx], y[idx])), "cpu")
    share, weight = ddp.local_share(torch.arange(len(x)))
    (network(share) * weight).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    return {"linear": {k: v.clone() for k, v in model.state_dict().items()}}


def dmad_checks(root: Path, out_dir: Path) -> dict:
    train, test = root / "brick" / "train" / "good", sorted((root / "brick" / "test").rglob("*.png"))
    out = {}
    memory_bank = DMAD(mode="memory_bank", **cases.DMAD_OPTIONS).fit(train)
    stacked = torch.stack([_load(p) for p in test])
    out["parallel_tensor"] = predict_parallel(memory_bank, stacked, batch_size=4)  # DMAD_OPTIONS batch_size
    out["parallel_blocks"] = predict_parallel(memory_bank, stacked)  # one block per rank
    out["parallel_list"] = predict_parallel(memory_bank, test, batch_size=4)  # DMAD_OPTIONS batch_size
    shard_banks(memory_bank)
    out["memory_bank_sharded"] = memory_bank.predict(test)
    save_sharded(memory_bank, out_dir / "memory_bank.safetensors")
    out["memory_bank_reloaded"] = load_sharded(out_dir / "memory_bank.safetensors").predict(test)
    trained = DMAD(mode="dmad", train=cases.DMAD_TRAIN, **cases.DMAD_OPTIONS).fit(train)
    out["dmad_history"] = trained.history
    out["dmad_mapper"] = {k: v.clone() for k, v in trained.mapper.state_dict().items()}
    shard_banks(trained)
    out["dmad_sharded"] = trained.predict(test)
    save_sharded(trained, out_dir / "dmad.safetensors")
    return {key: _plain(value) for key, value in out.items()}


def trainer_steps() -> dict:
    from ad_fast import MetaUAS, OneNIP
    from ad_fast.models.metauas.train import TrainConfig, train

    torch.manual_seed(0)
    redi = ReDi(**cases.REDI_OPTIONS)
    history = redi.fit(cases.redi_images(), validation=cases.redi_validation(), progress=False).history
    torch.manual_seed(0)
    metauas = MetaUAS(img_size=64)
    losses = train(metauas, cases.metauas_pairs(), TrainConfig(epochs=1, batch_size=2, max_steps=1))
    torch.manual_seed(0)
    onenip = OneNIP(**cases.ONENIP_OPTIONS)
    onenip_history = onenip.fit(cases.onenip_images(), epochs=1, max_steps=1, batch_size=2, progress=False,
                                calibration_images=2).history
    return {"redi_history": history, "redi_recover": _state(redi.recover), "redi_student": _state(redi.student),
            "metauas_losses": losses, "metauas_decoder": _state(metauas.decoder),
            "onenip_loss": onenip_history["loss"], "onenip_reconstruction": _state(onenip.reconstruction)}


def cli_runs(root: Path, out_dir: Path) -> None:
    from ad_fast.cli import main

    options = ["--option=mode=memory_bank"] + [f"--option={k}={v}" for k, v in cases.DMAD_OPTIONS.items()
                                                if k != "progress"]
    common = ["--device", "cpu", "--no-progress", "--batch-size", "3"]
    assert main(["evaluate", "--method", "dmad", *options, "--data", str(root), "--size", "64", "--overlays", "1",
                 "--output", str(out_dir / "cli_evaluate"), *common]) == 0
    assert main(["predict", *map(str, sorted((root / "brick" / "test").iterdir())), "--model", str(out_dir / "memory_bank.safetensors"),
                 "--output", str(out_dir / "cli_predict"), *common]) == 0


def _load(path: Path) -> torch.Tensor:
    from ad_fast.data.images import to_image_batch

    return to_image_batch([str(path)])[0][0]


def _state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _plain(value):
    """AnomalyResult -> dict of its tensors (torch.load(weights_only=True) reads it back)."""
    if hasattr(value, "anomaly_map"):
        return {"anomaly_map": value.anomaly_map, "pred_score": value.pred_score}
    return value


if __name__ == "__main__":
    out_dir, root = Path(sys.argv[1]), Path(sys.argv[2])
    rank, world, _ = setup("cpu")
    assert world == 2, world
    results = {**bank_checks(), **kcenter_checks(), **linear_step(), **dmad_checks(root, out_dir), **trainer_steps()}
    cli_runs(root, out_dir)
    torch.save(results, out_dir / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
