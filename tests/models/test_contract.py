"""The one detector contract, checked the same way for all four methods on tiny random models and images."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import ad_fast
from ad_fast import Decision, Detector
from ad_fast.checkpoints import read_safetensors
from ad_fast.models.base import FORMAT_VERSION

N_IMAGES = 5  # odd: the last batch of 2 is partial
# Small random models; fit options that make every fit take a second or two.
TINY = {
    "dmad": (dict(backbone="efficientnet_lite0", weights="random", mode="memory_bank", image_size=64, embed_dim=32,
                  coreset_ratio=0.5, progress=False), {}),
    "metauas": (dict(img_size=64, k=2), {}),
    "onenip": (dict(img_size=64, hidden_dim=32, heads=2, ffn_dim=32, encoder_depth=1, decoder_depth=1),
               dict(epochs=1, max_steps=1, batch_size=2, calibration_images=2, progress=False)),
    "redi": (dict(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1, batch_size=4,
                  stage1_epochs=1, stage2_epochs=1), dict(progress=False)),
}
METHODS = sorted(TINY)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """N_IMAGES random RGB images of 48 x 40, two of them in a sub-folder (listing is recursive)."""
    root = tmp_path_factory.mktemp("contract_images")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        where = root / "sub" if i >= 3 else root
        where.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(where / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def files(folder):
    return sorted(folder.rglob("*.png"))


@pytest.fixture(scope="module", params=METHODS)
def fitted(request, folder):
    torch.manual_seed(0)
    options, fit_options = TINY[request.param]
    model = ad_fast.create_model(request.param, **options)
    assert isinstance(model, Detector) and model.method == request.param
    assert model.fit(folder, **fit_options) is model
    return model.eval()


def _tensors(model: Detector) -> dict[str, torch.Tensor]:
    return model._state()[0]


def test_fit_on_a_folder_then_predict_any_input(fitted, folder, files):
    result = fitted.predict(folder)
    assert len(result) == N_IMAGES and result.pred_score.shape == (N_IMAGES,)
    assert result.anomaly_map.ndim == 4 and result.anomaly_map.shape[:2] == (N_IMAGES, 1)
    assert result.anomaly_map.device.type == result.pred_score.device.type == "cpu"  # results on the CPU
    assert torch.isfinite(result.anomaly_map).all() and torch.isfinite(result.pred_score).all()
    by_path = fitted.predict([str(f) for f in files])
    torch.testing.assert_close(by_path.anomaly_map, result.anomaly_map, rtol=0, atol=0)
    arrays = [np.array(Image.open(f)) for f in files]
    tensors = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])  # uint8 [B, 3, H, W]
    for other in (arrays, [Image.open(f) for f in files], tensors):
        torch.testing.assert_close(fitted.predict(other).pred_score, result.pred_score, rtol=1e-6, atol=1e-6)
    single = fitted.predict(str(files[0]))
    torch.testing.assert_close(single.pred_score, result.pred_score[:1], rtol=1e-5, atol=1e-5)


def test_predict_iter_yields_bounded_batches_that_join_to_predict(fitted, folder):
    parts = list(fitted.predict_iter(folder, batch_size=2))
    assert [len(p) for p in parts] == [2, 2, 1]
    whole = fitted.predict(folder, batch_size=2)
    torch.testing.assert_close(torch.cat([p.anomaly_map for p in parts]), whole.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([p.pred_score for p in parts]), whole.pred_score, rtol=0, atol=0)
    one_batch = fitted.predict(folder, batch_size=N_IMAGES)  # batching changes no score beyond float rounding
    torch.testing.assert_close(one_batch.pred_score, whole.pred_score, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip_is_bit_exact_in_the_one_format(fitted, folder, tmp_path):
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["method"] == fitted.method and metadata["format_version"] == str(FORMAT_VERSION)
    assert metadata["ad_fast_version"] == ad_fast.__version__
    assert json.loads(metadata["config"]) == json.loads(json.dumps(vars(fitted.config)))
    assert not list(tmp_path.glob(".*"))  # the atomic write left no temporary file
    for loaded in (ad_fast.load_model(path), Detector.load(path), type(fitted).load(path)):
        assert type(loaded) is type(fitted) and loaded.config == fitted.config
        saved, again = _tensors(fitted), _tensors(loaded)
        assert saved.keys() == again.keys()
        for name in saved:
            assert saved[name].dtype == again[name].dtype and torch.equal(saved[name], again[name]), name
    before, after = fitted.predict(folder), loaded.predict(folder)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)
    torch.testing.assert_close(after.pred_score, before.pred_score, rtol=0, atol=0)


def test_memory_mapped_load_scores_identically(fitted, folder, tmp_path):
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    mapped = ad_fast.load_model(path, mmap=True)
    torch.testing.assert_close(mapped.predict(folder).anomaly_map, fitted.predict(folder).anomaly_map, rtol=0, atol=0)
    mapped.save(tmp_path / "again.safetensors")  # a mapped model saves like any other
    _, first = read_safetensors(path)
    _, second = read_safetensors(tmp_path / "again.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_to_moves_everything_the_model_holds(fitted):
    moved = copy.deepcopy(fitted).to("meta")
    assert moved.device.type == "meta"
    tensors = _tensors(moved)
    assert tensors and all(t.device.type == "meta" for t in tensors.values()), \
        [name for name, t in tensors.items() if t.device.type != "meta"]
    assert all(t.device.type == "cpu" for t in _tensors(fitted).values())  # the original stays


def test_decision_is_applied_and_kept_in_the_model_file(fitted, folder, tmp_path):
    assert fitted.decision is not None  # learned at fit on held-out images, so predict decides by default
    learned = fitted.predict(folder)
    assert learned.pred_label.shape == (N_IMAGES,) and learned.pred_mask.shape == learned.anomaly_map.shape
    assert learned.pred_mask.dtype == torch.bool and learned.raw_score is not None
    undecided = copy.deepcopy(fitted)
    undecided.decision = None
    raw = undecided.predict(folder)
    threshold = float(raw.pred_score.median())
    low, high = float(raw.anomaly_map.min()), float(raw.anomaly_map.max()) + 1.0
    decision = Decision(threshold, threshold, threshold - 1.0, threshold + 1.0, low, high, source="user")
    model = copy.deepcopy(fitted)
    model.decision = decision
    decided = model.predict(folder)
    torch.testing.assert_close(decided.raw_score, raw.pred_score, rtol=0, atol=0)
    assert torch.equal(decided.pred_label, raw.pred_score >= threshold)
    assert decided.pred_score.min() >= 0.0 and decided.pred_score.max() <= 1.0
    model.save(tmp_path / "decided.safetensors")
    loaded = ad_fast.load_model(tmp_path / "decided.safetensors")
    assert loaded.decision == decision
    torch.testing.assert_close(loaded.predict(folder).pred_score, decided.pred_score, rtol=0, atol=0)


def test_bad_input_raises_clear_errors(fitted, tmp_path):
    with pytest.raises(ValueError, match=f"{fitted.input_name}: expected at least one image"):
        fitted.predict([])
    with pytest.raises(TypeError, match="expected a path, PIL image"):
        fitted.predict([object()])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        fitted.predict(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        fitted.predict(tmp_path / "empty")
    with pytest.raises(ValueError, match="batch_size"):
        fitted.predict(torch.rand(1, 3, 32, 32), batch_size=0)
    options, _ = TINY[fitted.method]
    with pytest.raises((RuntimeError, ValueError), match="fit"):
        ad_fast.create_model(fitted.method, **options).predict(torch.rand(1, 3, 32, 32))


def _rewrite_metadata(source, target, **changes) -> None:
    metadata, tensors = read_safetensors(source)
    save_file(tensors, str(target), metadata={**metadata, **changes})


def test_model_file_errors_name_the_problem(fitted, tmp_path):
    path = tmp_path / "model.safetensors"
    fitted.save(path)
    config = json.loads(read_safetensors(path)[0]["config"])
    _rewrite_metadata(path, tmp_path / "unknown.safetensors", config=json.dumps({**config, "bogus_key": 1}))
    with pytest.raises(ValueError, match=f"bogus_key.*{fitted.method}"):
        ad_fast.load_model(tmp_path / "unknown.safetensors")
    _rewrite_metadata(path, tmp_path / "future.safetensors", format_version="99")
    with pytest.raises(ValueError, match="format_version '99'"):
        ad_fast.load_model(tmp_path / "future.safetensors")
    other = next(m for m in METHODS if m != fitted.method)
    with pytest.raises(ValueError, match=f"holds a '{fitted.method}' model"):
        ad_fast.models.get_model_class(other).load(path)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not an ad_fast model file"):
        ad_fast.load_model(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="not a .* file saved by ad_fast"):
        type(fitted).load(tmp_path / "foreign.safetensors")


def test_every_method_has_a_typed_config_that_rebuilds_it():
    for method in METHODS:
        cls = ad_fast.models.get_model_class(method)
        config = cls.Config()
        assert cls.config_from_dict(json.loads(json.dumps(vars(config)))) == config
        with pytest.raises(ValueError, match=f"nope.*{method}"):
            cls.config_from_dict({"nope": math.pi})


def _write_legacy_file(model: Detector, path) -> None:
    """``model`` in the per-method format ad_fast 0.1 wrote (what ``save`` wrote before the one model file)."""
    from ad_fast.checkpoints import write_safetensors

    tensors, state = model._state()
    config = json.loads(json.dumps(vars(model.config)))
    if model.method == "dmad":
        info = {"format_version": 1, "config": config, **state}
        write_safetensors(path, tensors, {"method": "dmad", "ad_fast.dmad": json.dumps(info)})
    elif model.method == "redi":
        write_safetensors(path, tensors, {"method": "redi", "format": "ad_fast.ReDi", "format_version": "1",
                                          "info": json.dumps({"config": config, **state})})
    else:
        extra = state if model.method == "onenip" else {"prompt_pool": state["prompt_pool"]}
        torch.save({"format": f"ad_fast.{type(model).__name__}", "format_version": 1,
                    "config": {**config, "method": model.method, **extra},
                    "state_dict": {k: v.clone() for k, v in tensors.items()}}, path)


def test_files_of_ad_fast_0_1_fail_with_how_to_convert_and_convert_exactly(fitted, folder, tmp_path):
    legacy = tmp_path / "legacy.bin"
    _write_legacy_file(fitted, legacy)
    with pytest.raises(ValueError, match="not an ad_fast model file"):
        ad_fast.load_model(legacy)
    if fitted.method in ("dmad", "redi"):
        with pytest.raises(ValueError, match="ad_fast 0.1.*ad_fast.models.convert"):
            type(fitted).load(legacy)
    converted = ad_fast.models.convert(legacy, tmp_path / "new.safetensors")
    loaded = ad_fast.load_model(converted)
    assert type(loaded) is type(fitted) and loaded.config == fitted.config
    saved, again = _tensors(fitted), _tensors(loaded)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert loaded.decision is None  # ad_fast 0.1 files held no thresholds: the raw scores match
    torch.testing.assert_close(loaded.predict(folder).pred_score, fitted.predict(folder).raw_score, rtol=0, atol=0)
    with pytest.raises(ValueError, match="already in the current format"):
        ad_fast.models.convert(converted, tmp_path / "again.safetensors")


def test_input_size_is_the_configured_side_and_synthetic_defects_are_made_at_it(fitted, files, monkeypatch):
    """Every method's input_size is its config's square side; calibration paints its synthetic defects at that
    size (not at each file's own), which is what predict sees after resizing."""
    side = {"dmad": "image_size"}.get(fitted.method, "img_size")
    assert fitted.input_size == (getattr(fitted.config, side),) * 2
    from ad_fast import calibration

    seen = []
    real = calibration.synthetic_anomalies
    monkeypatch.setattr(calibration, "synthetic_anomalies",
                        lambda images, seed, size=None: seen.append(size) or real(images, seed, size))
    options = {"prompt": [str(files[0])]} if fitted.method == "metauas" else {}
    decision = fitted.decision  # the module's fitted model: keep its decision for the other tests
    try:
        fitted.calibrate([str(f) for f in files[:2]], **options)
    finally:
        fitted.decision = decision
    assert seen == [fitted.input_size]
    images, masks = real([str(files[0])], 0, fitted.input_size)
    assert images[0].shape == (3, *fitted.input_size) and masks[0].shape == (1, *fitted.input_size)
