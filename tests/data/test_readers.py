"""Every dataset reader on a small tree written in its layout."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ad_fast.data import BTAD, KSDD2, AnomalyDataset, Folder, JsonlDataset, MVTecAD, VisA, open_dataset


def _image(path, value=100, size=(10, 12), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((*size, 3) if mode == "RGB" else size, value, dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return path


def _mask(path, size=(10, 12), box=(2, 5, 3, 7)):
    array = np.zeros(size, dtype=np.uint8)
    array[box[0]:box[1], box[2]:box[3]] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def mvtec(tmp_path):
    for cls in ("bottle", "tile"):
        for i in range(3):
            _image(tmp_path / cls / "train" / "good" / f"{i:03d}.png")
        _image(tmp_path / cls / "test" / "good" / "000.png")
        _image(tmp_path / cls / "test" / "crack" / "000.jpg", fmt="JPEG")
        _image(tmp_path / cls / "test" / "crack" / "001.bmp", mode="L")
        _mask(tmp_path / cls / "ground_truth" / "crack" / "000_mask.png")
        _mask(tmp_path / cls / "ground_truth" / "crack" / "001_mask.png")
    return tmp_path


def test_mvtec_all_categories_and_items(mvtec):
    test = MVTecAD(mvtec, "test", size=16)
    assert test.categories == ["bottle", "tile"] and len(test) == 6
    assert test.labels.tolist() == [1, 1, 0, 1, 1, 0]
    good = test[2]
    assert good.label == 0 and good.defect == "good" and good.mask.shape == (1, 16, 16) and good.mask.sum() == 0
    crack = test[1]  # the grayscale BMP
    assert crack.image.shape == (3, 16, 16) and crack.image.dtype == torch.float32
    assert torch.all((crack.image - 100 / 255).abs() < 1e-5)
    assert crack.label == 1 and crack.category == "bottle" and crack.defect == "crack"
    assert set(crack.mask.unique().tolist()) == {0.0, 1.0}
    expected = torch.zeros(10, 12)
    expected[2:5, 3:7] = 1
    assert torch.equal(MVTecAD(mvtec, "test", size=None)[1].mask[0], expected)
    train = MVTecAD(mvtec, "train", category="tile", size=8)
    assert len(train) == 3 and train.labels.sum() == 0 and train.categories == ["tile"]


def test_mvtec_single_category_folder_and_batches(mvtec):
    test = MVTecAD(mvtec / "tile", "test", size=(8, 6))
    assert test.categories == ["tile"]
    batches = list(test.batches(batch_size=2))
    assert [len(b.label) for b in batches] == [2, 1]
    assert batches[0].image.shape == (2, 3, 8, 6) and batches[0].mask.shape == (2, 1, 8, 6)
    assert test.subset(label=0).labels.tolist() == [0]


def test_missing_mask_is_listed(mvtec):
    (mvtec / "tile" / "ground_truth" / "crack" / "001_mask.png").unlink()
    (mvtec / "bottle" / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(FileNotFoundError, match="2 file\\(s\\) missing") as info:
        MVTecAD(mvtec, "test")
    assert "001_mask.png" in str(info.value) and "000_mask.png" in str(info.value)


def test_bad_arguments(mvtec, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        MVTecAD(tmp_path / "nope")
    with pytest.raises(ValueError, match="category"):
        MVTecAD(mvtec, category="carpet")
    with pytest.raises(ValueError, match="split"):
        MVTecAD(mvtec, split="val")
    with pytest.raises(ValueError, match="format"):
        open_dataset("coco", mvtec)
    with pytest.raises(ValueError, match="size"):
        MVTecAD(mvtec, size=0)


def test_corrupt_image_raises_on_load(mvtec):
    (mvtec / "tile" / "test" / "good" / "000.png").write_bytes(b"not a png")
    dataset = MVTecAD(mvtec, "test", category="tile")
    with pytest.raises(ValueError, match="cannot read image"):
        dataset[2]


def test_btad(tmp_path):
    for i in range(2):
        _image(tmp_path / "01" / "train" / "ok" / f"{i:04d}.bmp")
    _image(tmp_path / "01" / "test" / "ok" / "0000.bmp")
    _image(tmp_path / "01" / "test" / "ko" / "0000.bmp")
    _mask(tmp_path / "01" / "ground_truth" / "ko" / "0000.png")
    test = open_dataset("btad", tmp_path, "test", size=8)
    assert isinstance(test, BTAD) and test.labels.tolist() == [1, 0] and test[0].mask.sum() > 0
    assert test[1].defect == "good" and len(BTAD(tmp_path, "train")) == 2


def test_visa(tmp_path):
    _image(tmp_path / "candle" / "Data" / "Images" / "Normal" / "0000.JPG", fmt="JPEG")
    _image(tmp_path / "candle" / "Data" / "Images" / "Normal" / "0001.JPG", fmt="JPEG")
    _image(tmp_path / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG", fmt="JPEG")
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[1:3, 1:3] = 3  # VisA masks hold class indices, not 255
    (tmp_path / "candle" / "Data" / "Masks" / "Anomaly").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "candle" / "Data" / "Masks" / "Anomaly" / "000.png")
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0000.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0001.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n")
    test = VisA(tmp_path, "test", size=None)
    assert test.labels.tolist() == [0, 1] and test[1].mask.sum() == 4
    assert len(VisA(tmp_path, "train")) == 1


def test_ksdd2_label_from_mask(tmp_path):
    for split in ("train", "test"):
        _image(tmp_path / split / "10000.png")
        _mask(tmp_path / split / "10000_GT.png", box=(0, 0, 0, 0))
        _image(tmp_path / split / "10001.png")
        _mask(tmp_path / split / "10001_GT.png")
    test = KSDD2(tmp_path, "test", size=8)
    assert test.labels.tolist() == [0, 1] and test.categories == ["ksdd2"]
    assert KSDD2(tmp_path, "train").labels.tolist() == [0]
    assert KSDD2(tmp_path, "train", train_anomalous=True).labels.tolist() == [0, 1]


def test_folder(tmp_path):
    for i in range(10):
        _image(tmp_path / "good" / f"{i}.png")
    _image(tmp_path / "bad" / "scratch" / "a.png")
    _image(tmp_path / "bad" / "b.png")
    _mask(tmp_path / "masks" / "scratch" / "a_mask.png")
    _mask(tmp_path / "masks" / "b.png")
    kwargs = dict(abnormal_dir=tmp_path / "bad", mask_dir=tmp_path / "masks", test_ratio=0.2, seed=3)
    train = Folder(tmp_path / "good", "train", **kwargs)
    test = Folder(tmp_path / "good", "test", **kwargs)
    assert len(train) == 8 and len(test) == 4 and test.has_masks
    assert not {r.image_path for r in train.records} & {r.image_path for r in test.records}
    assert sorted(r.defect for r in test.records if r.label) == ["abnormal", "scratch"]
    assert not Folder(tmp_path / "good", "test", abnormal_dir=tmp_path / "bad").has_masks


def test_jsonl(tmp_path):
    _image(tmp_path / "mvtec" / "bottle" / "test" / "good" / "000.png")
    _image(tmp_path / "mvtec" / "bottle" / "test" / "broken" / "000.png")
    _mask(tmp_path / "mvtec" / "bottle" / "ground_truth" / "broken" / "000_mask.png")
    lines = [
        {"filename": "mvtec/bottle/test/good/000.png", "label": 0, "label_name": "good", "clsname": "bottle"},
        {"filename": "mvtec/bottle/test/broken/000.png", "label": 1, "label_name": "broken",
         "maskname": "mvtec/bottle/ground_truth/broken/000_mask.png", "clsname": "bottle"},
    ]
    (tmp_path / "test.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    test = JsonlDataset(tmp_path, "test", size=8)
    assert test.labels.tolist() == [0, 1] and test[1].defect == "broken" and test[1].mask.sum() > 0
    (tmp_path / "bad.json").write_text('{"filename": "x.png"}\n')
    with pytest.raises(ValueError, match="line 1"):
        JsonlDataset(tmp_path, list_file=tmp_path / "bad.json")


def test_empty_dataset_rejected():
    with pytest.raises(ValueError, match="no images"):
        AnomalyDataset([], name="empty")


@pytest.mark.parametrize("mode, fmt", [("I;16", "PNG"), ("L", "TIFF"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "TIFF")])
def test_image_modes_and_formats(tmp_path, mode, fmt):
    from ad_fast.data import read_image

    path = tmp_path / f"x.{fmt.lower()}"
    if mode == "I;16":
        Image.fromarray(np.full((5, 7), 65535 // 2, dtype=np.uint16)).save(path, format=fmt)
        expected = 0.5
    else:
        Image.fromarray(np.full((5, 7, 3), 51, np.uint8)).convert(mode).save(path, format=fmt)
        expected = 0.2
    image = read_image(path, size=(4, 4))
    assert image.shape == (3, 4, 4) and torch.allclose(image, torch.full_like(image, expected), atol=0.01)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_read_only_arrays_convert_without_warning_and_stay_untouched(dtype):
    import warnings

    from ad_fast.data.images import to_image_batch

    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (5, 7, 3)).astype(dtype)
    if dtype == np.float32:
        array /= 255.0
    array.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (image,), sizes = to_image_batch(array)
    expected = array.astype(np.float64) / (255.0 if dtype == np.uint8 else 1.0)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, rtol=1e-6)
    image.add_(1.0)  # the tensor owns its memory: writing to it leaves the caller's array as it was
    np.testing.assert_allclose(array.astype(np.float64) / (255.0 if dtype == np.uint8 else 1.0), expected)
    assert sizes == [(5, 7)]
