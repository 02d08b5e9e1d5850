"""Export + torch-free runtime: exported graphs reproduce PyTorch (maps within 1e-4 after normalisation, identical
labels), the runtime's preprocessing is PyTorch's, and bad input gets errors that name it.

Exports take tens of seconds each (torch.export + ONNX translation), so the default run exports one small DMAD;
the other methods' parity tests are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ad_fast import DMAD, Decision, OneNIP, ReDi
from ad_fast.cli import main
from ad_fast.deploy import Inferencer
from ad_fast.deploy.preprocess import resize

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

S = 64
ATOL = 1e-4  # the bound on normalised maps and scores


def _decision_between(result) -> Decision:
    """Thresholds half-way between two observed raw values, so no image or pixel sits on a threshold."""
    raw_score = result.pred_score if result.raw_score is None else result.raw_score  # raw, also if fit decided
    raw_map = result.anomaly_map if result.raw_map is None else result.raw_map
    scores = raw_score.sort().values
    values = raw_map.flatten().sort().values
    middle, half = values.numel() // 2, scores.numel() // 2
    return Decision(image_threshold=float(scores[half - 1: half + 1].mean()),
                    pixel_threshold=float(values[middle - 1: middle + 1].mean()),
                    image_low=float(scores[0]), image_high=float(scores[-1]),
                    pixel_low=float(values[0]), pixel_high=float(values[-1]), source="test")


def _decided(model, result):
    return result if result.pred_label is not None else model.decision.apply(result)


def _images(count: int, seed: int, sizes=((50, 70), (80, 64), (64, 64))) -> list[np.ndarray]:
    """uint8 RGB arrays of mixed sizes (so the runtime's resize is exercised and PyTorch maps at the model size)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)]


def _check_parity(model, path, images, prompt=None) -> None:
    expected = _decided(model, model.predict(images) if prompt is None else model.predict(images, prompt))
    got = Inferencer(path).predict(images, prompt=prompt, batch_size=2)
    assert got.anomaly_map.shape == tuple(expected.anomaly_map.shape)
    assert expected.raw_map.std() > 0 and 0 < expected.pred_label.sum() < len(images)  # the comparison means something
    np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got.pred_score, expected.pred_score.numpy(), rtol=0, atol=ATOL)
    np.testing.assert_array_equal(got.pred_label, expected.pred_label.numpy())
    mismatch = (got.pred_mask != expected.pred_mask.numpy()).mean()
    assert mismatch < 1e-3  # pixels within ATOL of the threshold may flip; none of the images' labels may


# --------------------------------------------------------------------------------------------------- DMAD (fast)
@pytest.fixture(scope="module")
def dmad():
    torch.manual_seed(0)
    model = DMAD(backbone="test_resnet", weights="random", mode="memory_bank", image_size=S, embed_dim=64,
                 coreset_ratio=0.5, progress=False)
    model.fit(torch.rand(4, 3, S, S, generator=torch.Generator().manual_seed(0)))
    model.decision = _decision_between(model.predict(_images(6, seed=1)))
    return model


@pytest.fixture(scope="module")
def dmad_onnx(dmad, tmp_path_factory):
    return dmad.export(tmp_path_factory.mktemp("deploy") / "dmad.onnx")


def test_dmad_memory_bank_runtime_matches_pytorch(dmad, dmad_onnx):
    _check_parity(dmad, dmad_onnx, _images(6, seed=1))


def test_file_records_preprocessing_decision_and_dynamic_batch(dmad, dmad_onnx):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(dmad_onnx))
    meta = json.loads({p.key: p.value for p in model.metadata_props}["ad_fast"])
    assert meta["method"] == "dmad" and meta["inputs"] == ["images"]
    assert meta["preprocess"]["size"] == [S, S] and meta["preprocess"]["antialias"] is True
    assert meta["decision"] == dmad.decision.to_dict()
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert not any(node.domain.startswith("ad_fast") for node in model.graph.node)  # reference math only


def test_runtime_resize_is_pytorchs():
    rng = np.random.default_rng(0)
    for shape in [(37, 53), (300, 211), (5, 1)]:
        image = rng.random((*shape, 3), dtype=np.float32)
        tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
        for align_corners, antialias in [(False, True), (True, False), (False, False)]:
            for size in [(64, 64), (32, 48), (256, 200)]:
                expected = F.interpolate(tensor, size=size, mode="bilinear", align_corners=align_corners,
                                         antialias=antialias)[0].numpy()
                np.testing.assert_allclose(resize(image, size, align_corners, antialias), expected, rtol=0, atol=2e-6)


def test_runtime_imports_no_torch():
    code = "import sys, ad_fast.deploy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_gets_clear_errors(dmad_onnx, tmp_path):
    model = Inferencer(dmad_onnx)
    with pytest.raises(ValueError, match=r"images\[0\]: expected an image array .* channels, got shape \(8, 8, 2\)"):
        model.predict(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match=rf"images: expected an array \[B, 3, {S}, {S}\].*got shape \(1, 3, 32, 32\)"):
        model.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="prompt: the dmad export takes no prompt"):
        model.predict(np.zeros((8, 8, 3), np.uint8), prompt=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"images\[0\]: image has zero size"):
        model.predict(np.zeros((0, 8, 3), np.uint8))
    (tmp_path / "notes.onnx").write_text("not a model")
    with pytest.raises(ValueError, match="is not an ONNX model"):
        Inferencer(tmp_path / "notes.onnx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        Inferencer(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="backend: expected one of"):
        Inferencer(dmad_onnx, backend="tensorrt")


def test_onnx_file_without_ad_fast_metadata_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="not an ad_fast export"):
        Inferencer(tmp_path / "plain.onnx")


def test_export_argument_errors_name_the_argument(dmad, tmp_path):
    with pytest.raises(ValueError, match="format: expected one of"):
        dmad.export(tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ValueError, match="bank_dtype: expected None or one of"):
        dmad.export(tmp_path / "m.onnx", bank_dtype="int8")
    with pytest.raises(ValueError, match="img_size: not an export option of dmad"):
        dmad.export(tmp_path / "m.onnx", img_size=128)
    with pytest.raises(RuntimeError, match="fit"):
        DMAD(backbone="test_resnet", weights="random", mode="memory_bank", progress=False).export(tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_predict_runs_an_onnx_file(dmad_onnx, tmp_path, capsys):
    from PIL import Image

    for i, image in enumerate(_images(3, seed=3)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    assert main(["predict", str(tmp_path), "--model", str(dmad_onnx), "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "scores.json").read_text())
    expected = Inferencer(dmad_onnx).predict(sorted(str(p) for p in tmp_path.glob("*.png")))
    np.testing.assert_allclose([r["score"] for r in report["results"]], expected.pred_score, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- the others (slow)
@pytest.mark.slow
def test_dmad_float16_banks_halve_the_file(dmad, dmad_onnx, tmp_path):
    half = dmad.export(tmp_path / "half.onnx", bank_dtype="float16")
    assert half.stat().st_size < dmad_onnx.stat().st_size
    images = _images(3, seed=4)
    got, full = Inferencer(half).predict(images), Inferencer(dmad_onnx).predict(images)
    np.testing.assert_allclose(got.raw_map, full.raw_map, rtol=2e-3, atol=2e-3)  # float16 rows: ~1e-3 relative


@pytest.mark.slow
def test_dmad_mode_runtime_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = DMAD(backbone="test_resnet", weights="random", mode="dmad", image_size=S, embed_dim=64,
                 coreset_ratio=0.5, hidden=32, mapper_layers=2, n_textures=2, train={"epochs": 1}, progress=False)
    model.fit(torch.rand(4, 3, S, S, generator=torch.Generator().manual_seed(0)))
    model.decision = _decision_between(model.predict(_images(6, seed=1)))
    _check_parity(model, model.export(tmp_path / "dmad_mode.onnx"), _images(6, seed=1))


@pytest.mark.slow
def test_onenip_runtime_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = OneNIP(img_size=32, hidden_dim=32, heads=2, ffn_dim=32, encoder_depth=1, decoder_depth=1).eval()
    g = torch.Generator().manual_seed(0)
    model.set_prompts(list(torch.rand(3, 3, 32, 32, generator=g)), ["a", "b", "c"])
    model.calibrate(list(torch.rand(2, 3, 32, 32, generator=g)))
    model.decision = _decision_between(model.predict(_images(6, seed=1)))
    _check_parity(model, model.export(tmp_path / "onenip.onnx"), _images(6, seed=1))


@pytest.mark.slow
def test_redi_runtime_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = ReDi(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1)
    model.set_prompt_bank(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    model.trained_stages = [1, 2]
    model.eval()
    model.decision = _decision_between(model.predict(_images(6, seed=1)))
    _check_parity(model, model.export(tmp_path / "redi.onnx"), _images(6, seed=1))
