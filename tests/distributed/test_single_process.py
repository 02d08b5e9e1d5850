"""ad_fast.distributed without a process group: every helper is the one-process operation, and bad input fails
clearly. (The two-process behaviour is tested in test_torchrun.py.)"""

from __future__ import annotations

import pytest
import torch

from ad_fast import ops
from ad_fast.distributed import (ShardedMemoryBank, kcenter_greedy_sharded, load_training_state, predict_parallel,
                                 save_training_state)
from ad_fast.results import AnomalyResult


def _bank(rows: int = 23, dim: int = 7) -> ops.MemoryBank:
    return ops.MemoryBank(dim).add(torch.randn(rows, dim, generator=torch.Generator().manual_seed(0)))


def test_a_single_shard_searches_and_gathers_like_the_bank():
    bank = _bank()
    sharded = ShardedMemoryBank.from_bank(bank)
    q = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    for metric in ("l2", "ip"):
        for got, expected in zip(sharded.search(q, 4, metric), bank.search(q, 4, metric)):
            assert torch.equal(got, expected)
    index = torch.tensor([[3, 0], [22, 3]])
    assert torch.equal(sharded.rows[index], bank.rows[index])
    assert torch.equal(sharded.gather().rows, bank.rows) and len(sharded) == 23


def test_sharded_bank_rejects_bad_arguments():
    sharded = ShardedMemoryBank.from_bank(_bank())
    with pytest.raises(ValueError, match="k: expected an int in \\[1, 23\\]"):
        sharded.search(torch.randn(2, 7), 24)
    with pytest.raises(ValueError, match="query: expected"):
        sharded.search(torch.randn(2, 6), 1)
    with pytest.raises(IndexError, match="indices: expected values in \\[0, 23\\)"):
        sharded.take(torch.tensor([23]))
    with pytest.raises(TypeError, match="int64 tensor"):
        sharded.rows[[1, 2]]
    with pytest.raises(ValueError, match="global_index: expected an int64 Tensor\\[23\\]"):
        ShardedMemoryBank(_bank(), torch.arange(22), 23)


@pytest.mark.parametrize("case", [dict(n_select=6, projection_dim=4, seed=2), dict(ratio=0.5, start_index=3)])
def test_one_rank_kcenter_equals_the_op(case):
    features = torch.randn(31, 9, generator=torch.Generator().manual_seed(3))
    picks, radii = kcenter_greedy_sharded(features, return_radii=True, **case)
    expected_picks, expected_radii = ops.kcenter_greedy(features, return_radii=True, **case)
    assert torch.equal(picks, expected_picks)
    torch.testing.assert_close(radii, expected_radii, rtol=1e-6, atol=1e-6)  # float32 distance rounding


def test_kcenter_sharded_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_select"):
        kcenter_greedy_sharded(torch.randn(4, 3), n_select=5)
    with pytest.raises(ValueError, match="start_index"):
        kcenter_greedy_sharded(torch.randn(4, 3), n_select=2, start_index=4)


def test_training_state_round_trip_and_clear_errors(tmp_path):
    state = {"epoch": 3, "weights": torch.arange(4.0), "history": [1.0, 0.5]}
    save_training_state(tmp_path / "sub" / "last.pt", state)
    loaded = load_training_state(tmp_path / "sub" / "last.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["weights"], state["weights"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["last.pt"]  # no temporary file left
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt.*not a readable OneNIP checkpoint"):
        load_training_state(tmp_path / "bad.pt", "OneNIP checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="no dict inside"):
        load_training_state(tmp_path / "list.pt")


class _Doubler:
    def predict(self, images, **kwargs):
        images = torch.as_tensor(images) if not isinstance(images, torch.Tensor) else images
        return AnomalyResult(images[:, :1] * 2, images.flatten(1).sum(1), extras={"ids": list(range(len(images)))})


def test_predict_parallel_without_a_group_is_predict():
    images = torch.rand(5, 3, 4, 4)
    result = predict_parallel(_Doubler(), images)
    assert torch.equal(result.anomaly_map, images[:, :1] * 2) and result.extras["ids"] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="batch_size: expected None or a positive int"):
        predict_parallel(_Doubler(), images, batch_size=0)


def test_predict_parallel_with_a_batch_size_predicts_batch_by_batch_in_order():
    images = torch.rand(5, 3, 4, 4)
    result = predict_parallel(_Doubler(), images, batch_size=2)
    assert torch.equal(result.pred_score, images.flatten(1).sum(1))
    assert result.extras["ids"] == [0, 1, 0, 1, 0] and result.pred_mask is None  # one list per batch, joined
