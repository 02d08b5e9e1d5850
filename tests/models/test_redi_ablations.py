"""ReDi ablation options (spec redi.md §6.5): input_map (Tab. 5), HOG bins/cells (Tab. 10), prompt (Tab. 8), frb (Tab. 11)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ad_fast import ReDi
from ad_fast.models.redi import ReDiConfig
from ad_fast.models.redi.discriminate import DiscriminateStudent, LearnableExtractor

from test_redi import TINY

cv2 = pytest.importorskip("cv2")

ABLATION = dict(TINY, input_map="canny", prompt="free", frb=False)


def _edgy_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Images in [0, 1] with sharp blocks (so Canny finds edges) plus mild noise."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="nearest")
    return (0.8 * blocks + 0.2 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _cv2_gray(x: torch.Tensor) -> list[np.ndarray]:
    """uint8 grayscale images as the docs of cv2.Canny / cv2.Sobel expect them, from Tensor[B, 3, H, W] in [0, 1]."""
    u8 = np.rint(x.permute(0, 2, 3, 1).numpy() * np.float32(255)).clip(0, 255).astype(np.uint8)
    return [cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) for img in u8]


@pytest.fixture(scope="module")
def trained_ablation():
    model = ReDi(**ABLATION)
    history = model.fit(_edgy_images(6), progress=False).history
    return model, history


# ----------------------------------------------------------------------------- configuration

def test_defaults_are_the_paper_setting_and_options_round_trip():
    config = ReDiConfig()
    assert (config.input_map, config.prompt, config.frb) == ("hog", "pretrained", True)
    assert (config.hog_orientations, config.hog_cell) == (9, 8)
    ablated = ReDiConfig(input_map="sobel", prompt="free", frb=False, hog_orientations=18, hog_cell=4)
    assert ReDiConfig.from_dict(ablated.to_dict()) == ablated
    # Files written before these options existed load with the defaults.
    old = {k: v for k, v in config.to_dict().items() if k not in ("input_map", "prompt", "frb")}
    assert ReDiConfig.from_dict(old) == config


@pytest.mark.parametrize("option, value", [
    ("input_map", "laplace"), ("input_map", None), ("prompt", "none"), ("prompt", "self_supervised"),
    ("frb", "no"), ("frb", 0),
])
def test_bad_option_values_raise_value_error_naming_the_argument(option, value):
    with pytest.raises(ValueError, match=f"^{option}:"):
        ReDiConfig(**{option: value})
    with pytest.raises(ValueError, match=f"^{option}:"):
        ReDi(**dict(TINY, **{option: value}))


# ----------------------------------------------------------------------------- self-generated maps

@pytest.mark.parametrize("hog_channels", [1, 3])
@pytest.mark.parametrize("kind", ["sobel", "canny"])
def test_edge_map_equals_cv2(kind, hog_channels):
    model = ReDi(**dict(TINY, input_map=kind, hog_channels=hog_channels))
    x = _edgy_images(3, seed=1)
    expected = []
    for gray in _cv2_gray(x):
        if kind == "canny":
            unit = cv2.Canny(gray, 50, 100).astype(np.float64) / 255.0
        else:
            gx, gy = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
            unit = np.hypot(gx, gy) / (4 * 255 * math.sqrt(2))
        expected.append(unit * 2 - 1)
    expected = torch.from_numpy(np.stack(expected)).float()[:, None].expand(-1, hog_channels, -1, -1)
    got = model.generate_map(x)
    assert got.shape == (3, hog_channels, 32, 32) and got.dtype == torch.float32
    assert (expected > -1).float().mean() > 0.05  # the images do have edges
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 if kind == "sobel" else 0)
    assert model.recover.hog_encoder.levels[0][0].in_channels == hog_channels


def test_roberts_map_equals_templates():
    """Roberts (spec §2.2): hypot of the [[-1, 0], [0, 1]] and [[0, -1], [1, 0]] responses, OpenCV border (reflect-101)."""
    model = ReDi(**dict(TINY, input_map="roberts"))
    x = _edgy_images(2, seed=2)
    expected = []
    for gray in _cv2_gray(x):
        p = np.pad(gray.astype(np.float64), ((1, 0), (1, 0)), mode="reflect")  # p[y + 1, x + 1] = gray[y, x]
        gx = p[1:, 1:] - p[:-1, :-1]
        gy = p[1:, :-1] - p[:-1, 1:]
        expected.append(np.hypot(gx, gy) / (255 * math.sqrt(2)) * 2 - 1)
    expected = torch.from_numpy(np.stack(expected)).float()[:, None]
    torch.testing.assert_close(model.generate_map(x), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bins, cell", [(4, 8), (18, 4)])
def test_hog_bin_and_cell_ablations_match_scikit_image(bins, cell):
    """Tab. 10's HOG settings are the existing hog_orientations / hog_cell options."""
    feature = pytest.importorskip("skimage.feature")
    model = ReDi(**dict(TINY, hog_orientations=bins, hog_cell=cell))
    x = _edgy_images(1, seed=3).double()
    _, sk_image = feature.hog((x[0].permute(1, 2, 0) * 255).numpy(), orientations=bins, pixels_per_cell=(cell, cell),
                              cells_per_block=(1, 1), visualize=True, channel_axis=-1)
    expected = np.clip(sk_image / 10.0, 0, 1) * 2 - 1
    np.testing.assert_allclose(model.generate_map(x.float())[0, 0].numpy(), expected, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- output shapes

@pytest.mark.parametrize("options", [
    dict(input_map="sobel"), dict(input_map="roberts"), dict(input_map="canny", hog_channels=3),
    dict(hog_orientations=4), dict(hog_orientations=18, hog_cell=4), dict(prompt="free"), dict(frb=False),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_forward_shapes(options):
    model = ReDi(**dict(TINY, **options)).eval()
    if model.uses_prompt:
        model.set_prompt_bank(_edgy_images(3, seed=4))
    with torch.no_grad():
        out = model(_edgy_images(2, seed=5))
    assert out["anomaly_map"].shape == (2, 1, 32, 32) and out["pred_score"].shape == (2,)
    assert out["recovered"].shape == (2, 3, 32, 32)
    assert ("prompt_index" in out) == (options.get("prompt", "pretrained") == "pretrained")
    assert all(torch.isfinite(v.float()).all() for v in out.values())


# ----------------------------------------------------------------------------- prompt "free"

def _no_retrieval(*args, **kwargs):
    raise AssertionError("prompt retrieval was used")


def test_free_prompt_never_retrieves(monkeypatch):
    monkeypatch.setattr("ad_fast.models.redi.model.retrieve_prompts", _no_retrieval)
    monkeypatch.setattr(ReDi, "prompt_feature", _no_retrieval)
    options = dict(TINY, stage1_epochs=1, stage2_epochs=1)
    with pytest.raises(AssertionError, match="retrieval"):  # the default does retrieve, so the patch bites
        ReDi(**options).fit(_edgy_images(3), progress=False)
    model = ReDi(**dict(options, prompt="free"))
    model.fit(_edgy_images(3), progress=False)
    result = model.predict(_edgy_images(2, seed=6))
    assert result.anomaly_map.shape == (2, 1, 32, 32) and "prompt_index" not in result.extras
    assert model.prompt_images.shape[0] == 0 and model.prompt_features.shape[0] == 0  # no bank is stored
    assert model.recover.prompt_encoder is None
    with pytest.raises(ValueError, match="prompt"):
        model.recover(model.generate_map(_edgy_images(1)), torch.zeros(1, 3, 32, 32))


def test_free_prompt_recover_network_is_a_full_width_unet():
    with torch.device("meta"):
        default, free = ReDi(img_size=256), ReDi(img_size=256, prompt="free")
    assert free.recover.hog_encoder.levels[-1][0].out_channels == 512  # N1 at full width: (64, ..., 512)
    assert default.recover.hog_encoder.levels[-1][0].out_channels == 256
    # The decoder is unchanged; one full-width N1 replaces the two half-width encoders: RIAD's UNet on H, 28.80 M.
    decoder = lambda m: sum(p.numel() for p in m.recover.decoder.parameters())  # noqa: E731
    assert decoder(free) == decoder(default)
    assert round(free.parameter_counts()["recover"] / 1e6, 2) == 28.80


# ----------------------------------------------------------------------------- frb=False

def test_without_frb_structure_and_parameter_counts():
    with torch.device("meta"):
        model = ReDi(img_size=256, frb=False)
    counts = model.parameter_counts()
    assert isinstance(model.student, LearnableExtractor) and not isinstance(model.student, DiscriminateStudent)
    assert "frb" not in counts and "aggregation" not in counts  # no aggregation, no Feature Recovery Block
    # Extractor 3 made learnable: WideResNet-50's stem + layer1-3 (backbone minus layer4), 24.86 M.
    layer4 = sum(p.numel() for p in model.backbone.net.layer4.parameters())
    assert counts["extractor"] == counts["backbone"] - layer4
    assert round(counts["extractor"] / 1e6, 2) == 24.86
    assert round(counts["recover"] / 1e6, 2) == 22.59 and round(counts["trainable"] / 1e6, 2) == 47.45


def test_without_frb_student_starts_as_the_backbone_and_is_trainable():
    model = ReDi(**dict(TINY, frb=False)).eval()
    assert all(p.requires_grad for p in model.student.parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = _edgy_images(2, seed=7)
    y = x * 2 - 1
    feats_x, feats_y = model.feature_pair(x, y)
    for fx, fy in zip(feats_x, feats_y):  # Y = X and identical weights: F_Y = F_X
        torch.testing.assert_close(fy, fx)
    assert feats_y[0].requires_grad and not feats_x[0].requires_grad


# ----------------------------------------------------------------------------- training, save/load

def test_ablation_training_losses_finite_and_decreasing(trained_ablation):
    _, history = trained_ablation
    for losses in history.values():
        assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
        assert losses[-1] < 0.9 * losses[0]


def test_ablation_save_load_round_trip(trained_ablation, tmp_path):
    model, _ = trained_ablation
    path = tmp_path / "redi_ablation.safetensors"
    model.save(path)
    loaded = ReDi.from_pretrained(path)
    assert loaded.config == model.config and isinstance(loaded.student, LearnableExtractor)
    images = _edgy_images(2, seed=8)
    a, b = model.predict(images), loaded.predict(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.pred_score, b.pred_score)


@pytest.mark.parametrize("change", [dict(input_map="sobel"), dict(frb=True), dict(prompt="pretrained")])
def test_resume_into_a_different_ablation_names_the_option(tmp_path, change):
    images = _edgy_images(3, seed=9)
    options = dict(ABLATION, stage1_epochs=1, stage2_epochs=1)
    ReDi(**options).fit(images, checkpoint_dir=tmp_path, progress=False, stages=(1,))
    option = next(iter(change))
    with pytest.raises(ValueError, match=f"different ReDi configuration.*{option}: "):
        ReDi(**dict(options, **change)).fit(images, checkpoint_dir=tmp_path, progress=False, stages=(1,))
