"""The generated demo dataset: layout, masks, reuse, and no half-written folders."""

import pytest

from ad_fast.data import MVTecAD, make_demo_dataset


def test_demo_dataset_layout(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", categories=("brick", "marble"), n_train=2, n_test_good=1,
                             n_per_defect=1, size=32, seed=1)
    train, test = MVTecAD(root, "train", size=None), MVTecAD(root, "test", size=None)
    assert train.categories == ["brick", "marble"] and len(train) == 4 and len(test) == 8
    for sample in test:
        assert sample.image.shape == (3, 32, 32)
        assert (sample.mask.sum() > 0) == (sample.label == 1)
    assert make_demo_dataset(root, categories=("brick", "marble"), n_train=2, n_test_good=1, n_per_defect=1,
                             size=32, seed=1) == root
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        make_demo_dataset(root, categories=("brick",), size=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_demo_rejects_unknown_category(tmp_path):
    with pytest.raises(ValueError, match="categories"):
        make_demo_dataset(tmp_path / "demo", categories=("carpet",))
    assert not (tmp_path / "demo").exists()
