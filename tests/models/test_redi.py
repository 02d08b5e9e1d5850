"""ReDi: HOG input, prompt retrieval, parameter counts, losses vs naive formulas, training, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ad_fast
from ad_fast import ReDi
from ad_fast.models.redi import ReDiConfig
from ad_fast.models.redi.losses import (
    cosine_loss,
    msgms_loss,
    self_correlation_loss,
    self_correlation_loss_naive,
)
from ad_fast.models.redi.prompt import retrieve_prompts
from ad_fast.models.redi.recover import UNetDecoder, UNetEncoder, unet_widths

TINY = dict(img_size=32, backbone="resnet18", hip_width=8, student_width_factor=1, batch_size=4,
            stage1_epochs=4, stage2_epochs=4)


def _normal_images(n: int, size: int = 40, seed: int = 0) -> torch.Tensor:
    """Smooth random 'normal' images in [0, 1]: a shared pattern plus small per-image noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=size, mode="bilinear")
    return (base + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def trained():
    model = ReDi(**TINY)
    # All six train (the thresholds are learned on two more normal images, not on a share of these).
    history = model.fit(_normal_images(6), validation=_normal_images(2, seed=99), progress=False).history
    return model, history


# ----------------------------------------------------------------------------- HOG input

def test_hog_input_equals_ops_hog(trained):
    model, _ = trained
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _, hog_image = ad_fast.ops.hog(x * 255.0, 9, (8, 8), (1, 1), visualize=True)
    expected = (hog_image / 10.0).clamp(0, 1) * 2 - 1  # spec §8.2: clip(h / 10, 0, 1), then HIP's [-1, 1]
    torch.testing.assert_close(model.generate_map(x), expected.float(), rtol=0, atol=1e-6)


def test_hog_input_matches_scikit_image():
    feature = pytest.importorskip("skimage.feature")
    model_hog = ReDi(**TINY).map_transform
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, sk_image = feature.hog((x[0].permute(1, 2, 0) * 255).numpy(), orientations=9, pixels_per_cell=(8, 8),
                              cells_per_block=(1, 1), visualize=True, channel_axis=-1)
    expected = np.clip(sk_image / 10.0, 0, 1) * 2 - 1
    np.testing.assert_allclose(model_hog(x.float())[0, 0].numpy(), expected, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- prompts

def test_prompt_retrieval_never_returns_the_query_in_training():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(20, 16, generator=g)
    feats[5] = feats[4]  # exact duplicates: the query ties with another row at similarity 1
    feats[11] = feats[10] * 3.0
    index, similarity = retrieve_prompts(feats, feats, exclude=torch.arange(20))
    assert not bool((index == torch.arange(20)).any())
    # Oracle: cosine matrix in float64 with the diagonal masked.
    f = feats.double() / feats.double().norm(dim=1, keepdim=True)
    sims = (f @ f.T).fill_diagonal_(-np.inf)
    torch.testing.assert_close(similarity.double(), sims.max(dim=1).values, rtol=1e-5, atol=1e-5)
    assert index[4] == 5 and index[5] == 4 and index[10] == 11 and index[11] == 10
    # At inference nothing is excluded: a bank row is its own nearest neighbour.
    assert torch.equal(retrieve_prompts(feats[:3], feats)[0][[0, 1, 2]], torch.tensor([0, 1, 2]))


def test_prompt_retrieval_bad_input():
    feats = torch.randn(3, 4)
    with pytest.raises(ValueError, match="bank"):
        retrieve_prompts(feats[:1], feats[:1], exclude=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude"):
        retrieve_prompts(feats, feats, exclude=torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="exclude"):
        retrieve_prompts(feats, feats, exclude=torch.tensor([0, 1]))


# ----------------------------------------------------------------------------- parameter counts

def test_parameter_counts_match_spec():
    with torch.device("meta"):  # shapes only: no memory, no initialisation, no forward pass
        counts = ReDi(img_size=256).parameter_counts()
    millions = {k: round(v / 1e6, 2) for k, v in counts.items()}
    # Spec redi.md §2.4/§2.5: HIP 22.59 M, MFF+OCE 58.89 M, FRB 24.92 M, ReDi 106.39 M (paper Tab.12: 106.4 M).
    assert millions["recover"] == 22.59
    assert millions["aggregation"] == 58.89
    assert millions["frb"] == 24.92
    assert millions["trainable"] == 106.39
    assert round(counts["trainable"] / 1e6, 1) == 106.4
    # The RIAD UNet the recover network derives from: 28.8 M (paper Tab.12).
    riad = UNetEncoder(3, unet_widths(64)), UNetDecoder(unet_widths(64))
    assert round(sum(p.numel() for m in riad for p in m.parameters()) / 1e6, 1) == 28.8


# ----------------------------------------------------------------------------- losses

@pytest.mark.parametrize("shapes", [[(2, 8, 5, 7)], [(3, 40, 3, 3), (1, 6, 9, 4)], [(2, 16, 4, 4)]])
def test_self_correlation_fast_path_equals_naive_float64(shapes):
    g = torch.Generator().manual_seed(4)
    fx = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    fy = [(f + 0.3 * torch.randn(f.shape, generator=g, dtype=torch.float64)).requires_grad_() for f in fx]
    fast = self_correlation_loss(fx, fy)
    naive = self_correlation_loss_naive(fx, fy)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    grad_fast = torch.autograd.grad(fast, fy)
    grad_naive = torch.autograd.grad(naive, fy)
    for a, b in zip(grad_fast, grad_naive):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_self_correlation_fast_path_float32_near_convergence():
    """F_Y ≈ F_X (the normal case late in training): the float32 fast path keeps ~5 digits."""
    g = torch.Generator().manual_seed(5)
    fx = [torch.randn(2, 32, 24, 24, generator=g)]
    fy = [fx[0] + 1e-3 * torch.randn(fx[0].shape, generator=g)]
    naive = self_correlation_loss_naive([fx[0].double()], [fy[0].double()])
    torch.testing.assert_close(self_correlation_loss(fx, fy).double(), naive, rtol=1e-4, atol=0)


def test_cosine_loss_matches_formula():
    g = torch.Generator().manual_seed(6)
    fx = [torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, 3, 1, generator=g, dtype=torch.float64)]
    fy = [torch.randn(f.shape, generator=g, dtype=torch.float64) for f in fx]
    per_level = []
    for a, b in zip(fx, fy):
        a, b = a.flatten(1).numpy(), b.flatten(1).numpy()
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        per_level.append(np.mean(1 - cos))
    np.testing.assert_allclose(cosine_loss(fx, fy).item(), np.mean(per_level), rtol=1e-12)


def _msgms_oracle(x: np.ndarray, y: np.ndarray) -> float:
    """RIAD's MSGMS with SciPy: zero-padded 3x3 median, valid Prewitt correlation, 2x2 average pooling."""
    from scipy import ndimage, signal

    gx = np.array([[-1, 0, 1]] * 3) / 3.0
    gy = np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]]) / 3.0
    total = 0.0
    a, b = x.mean(axis=1), y.mean(axis=1)  # [B, H, W]
    for scale in range(4):
        if scale:
            a = a.reshape(a.shape[0], a.shape[1] // 2, 2, -1, 2).mean(axis=(2, 4))
            b = b.reshape(b.shape[0], b.shape[1] // 2, 2, -1, 2).mean(axis=(2, 4))
        values = []
        for ia, ib in zip(a, b):
            mags = []
            for img in (ia, ib):
                med = ndimage.median_filter(img, size=3, mode="constant", cval=0.0)
                mags.append(np.hypot(signal.correlate2d(med, gx, "valid"), signal.correlate2d(med, gy, "valid")))
            gms = (2 * mags[0] * mags[1] + 0.0026) / (mags[0] ** 2 + mags[1] ** 2 + 0.0026)
            values.append(1 - gms)
        total += np.mean(values)
    return total / 4


def test_msgms_matches_scipy_oracle():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    np.testing.assert_allclose(msgms_loss(x, y).item(), _msgms_oracle(x.numpy(), y.numpy()), rtol=1e-10)
    assert msgms_loss(x, x).item() == 0.0


# ----------------------------------------------------------------------------- training and inference

def test_training_reduces_both_losses(trained):
    _, history = trained
    assert len(history["recover"]) == TINY["stage1_epochs"] and len(history["discriminate"]) == TINY["stage2_epochs"]
    assert history["recover"][-1] < 0.9 * history["recover"][0]
    assert history["discriminate"][-1] < 0.9 * history["discriminate"][0]


def test_predict_returns_anomaly_result(trained):
    model, _ = trained
    result = model.predict(_normal_images(3, size=48, seed=9), resize_to_input=True)
    assert isinstance(result, ad_fast.AnomalyResult)
    assert result.anomaly_map.shape == (3, 1, 48, 48) and result.pred_score.shape == (3,)
    assert torch.isfinite(result.anomaly_map).all() and (result.anomaly_map >= 0).all()
    assert result.extras["prompt_index"].shape == (3,)
    raw = model.predict(_normal_images(3, size=48, seed=9))
    assert raw.anomaly_map.shape == (3, 1, 32, 32) and raw.raw_map is not None  # fit learned a decision
    # the method's own score = max of its own (blurred) map at the working resolution
    torch.testing.assert_close(raw.raw_score, raw.raw_map.flatten(1).amax(1))


def test_predict_reference_backend_matches_default(trained):
    model, _ = trained
    images = _normal_images(2, size=32, seed=10)
    default = model.predict(images)
    with ad_fast.ops.use_backend("reference"):
        reference = model.predict(images)
    assert torch.equal(default.extras["prompt_index"], reference.extras["prompt_index"])
    torch.testing.assert_close(default.anomaly_map, reference.anomaly_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(default.pred_score, reference.pred_score, rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "redi.safetensors"
    model.save(path)
    loaded = ReDi.from_pretrained(path)
    assert loaded.config == model.config and loaded.trained_stages == [1, 2]
    images = _normal_images(2, size=32, seed=11)
    a, b = model.predict(images), loaded.predict(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


def test_stage_resume_matches_unbroken_run(tmp_path):
    images = _normal_images(5, seed=12)
    options = dict(TINY, stage2_epochs=1)
    unbroken = ReDi(**dict(options, stage1_epochs=3)).fit(images, progress=False, stages=(1,)).history
    ReDi(**dict(options, stage1_epochs=1)).fit(images, checkpoint_dir=tmp_path, progress=False, stages=(1,))
    resumed = ReDi(**dict(options, stage1_epochs=3)).fit(images, checkpoint_dir=tmp_path, progress=False, stages=(1,)).history
    np.testing.assert_allclose(resumed["recover"], unbroken["recover"], rtol=1e-5)
    with pytest.raises(ValueError, match="different ReDi configuration"):
        ReDi(**dict(options, stage1_epochs=3, msgms_weight=0.5)).fit(images, checkpoint_dir=tmp_path, progress=False, stages=(1,))


def test_fit_categories_per_category_and_unified():
    data = {"a": _normal_images(3, seed=13), "b": _normal_images(3, seed=14)}  # 2 + 2 fit, 1 + 1 held out
    options = dict(TINY, stage1_epochs=1, stage2_epochs=1)
    separate = ReDi.fit_categories(data, progress=False, **options)
    assert separate["a"] is not separate["b"] and separate["a"].prompt_images.shape[0] == 2
    unified = ReDi.fit_categories(data, unified=True, progress=False, **options)
    # unified: one model on the union (6 images, one held out for its thresholds)
    assert unified["a"] is unified["b"] and unified["a"].prompt_images.shape[0] == 5


def test_registry_fit_on_dataset_and_load_model(tmp_path):
    from ad_fast.data import MVTecAD, make_demo_dataset
    from ad_fast.models import create_model, load_model

    root = make_demo_dataset(tmp_path / "demo", categories=("brick",), n_train=3, n_test_good=1, n_per_defect=1, size=32)
    train = MVTecAD(root, category="brick", split="train", size=32)
    model = create_model("redi", **dict(TINY, stage1_epochs=1, stage2_epochs=1))
    test_good = MVTecAD(root, category="brick", split="test", size=32).subset(label=0)
    model.fit(train, validation=test_good, progress=False)  # every training image becomes a prompt
    assert model.prompt_images.shape[0] == len(train.subset(label=0))
    model.save(tmp_path / "redi.safetensors")
    loaded = load_model(tmp_path / "redi.safetensors")
    assert isinstance(loaded, ReDi) and loaded.config == model.config


def test_local_backbone_weights(tmp_path):
    from ad_fast._timm_compat import import_timm

    source = import_timm().create_model("resnet18", pretrained=False, num_classes=10)  # with a foreign fc head
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = ReDi(backbone_weights=tmp_path / "resnet18.pth", **TINY)
    for name, tensor in model.backbone.net.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="backbone_weights"):
        ReDi(backbone_weights=tmp_path / "bad.pth", **TINY)


# ----------------------------------------------------------------------------- errors

def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="img_size"):
        ReDiConfig(img_size=48)
    with pytest.raises(ValueError, match="hog_channels"):
        ReDiConfig(hog_channels=2)
    with pytest.raises(ValueError, match="hog_scale"):
        ReDiConfig(hog_scale="log")
    with pytest.raises(TypeError, match="hip_width"):
        ReDiConfig(hip_width=8.0)
    with pytest.raises(ValueError, match="config"):
        ReDiConfig.from_dict({"img_size": 32, "colour": "x"})
    with pytest.raises(ValueError, match="backbone"):
        ReDi(**dict(TINY, backbone="vit_tiny_patch16_224"))
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        ReDi(backbone_weights="/nonexistent/w.pth", **TINY)


def test_bad_input_errors(trained, tmp_path):
    model, _ = trained
    with pytest.raises(RuntimeError, match="fit"):
        ReDi(**TINY).predict(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 2"):
        ReDi(**TINY).fit(torch.rand(1, 3, 32, 32), progress=False)
    with pytest.raises(ValueError, match="stages"):
        ReDi(**TINY).fit(torch.rand(2, 3, 32, 32), stages=(3,), progress=False)
    with pytest.raises(TypeError, match="images"):
        model.predict(42)
    with pytest.raises(ValueError, match="images"):
        model.predict(torch.rand(1, 5, 32, 32))
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(torch.rand(1, 3, 32, 32), batch_size=0)
    with pytest.raises(ValueError, match="resize_to_input"):
        model.predict([torch.rand(3, 32, 32), torch.rand(3, 40, 40)], resize_to_input=True)
    with pytest.raises(FileNotFoundError, match="path"):
        ReDi.from_pretrained(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="path"):
        ReDi.from_pretrained(corrupt)


@pytest.mark.cuda
def test_predict_cuda_matches_cpu(trained, tmp_path):
    model, _ = trained
    path = tmp_path / "redi.safetensors"
    model.save(path)
    gpu = ReDi.load(path, device="cuda")
    images = _normal_images(2, size=32, seed=15)
    cpu_result, gpu_result = model.predict(images), gpu.predict(images)
    assert torch.equal(cpu_result.extras["prompt_index"], gpu_result.extras["prompt_index"].cpu())
    torch.testing.assert_close(gpu_result.anomaly_map.cpu(), cpu_result.anomaly_map, rtol=1e-3, atol=1e-3)
    with ad_fast.ops.use_backend("reference"):
        reference = gpu.predict(images)
    torch.testing.assert_close(gpu_result.anomaly_map, reference.anomaly_map, rtol=1e-4, atol=1e-5)
    x = images.cuda()
    loss = gpu.discrimination_loss(x, gpu.generate_map(x), torch.tensor([0, 1]))
    assert torch.isfinite(loss)
