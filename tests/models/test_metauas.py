"""MetaUAS: official checkpoint layout, I/O, numerics of the alignment/decoder pieces, inference API, training."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ad_fast
from ad_fast import MetaUAS, PromptPool
from ad_fast.models.metauas import weights
from ad_fast.models.metauas.alignment import FeatureAlignment
from ad_fast.models.metauas.decoder import SCSE
from ad_fast.models.metauas.pairs import ChangePairDataset
from ad_fast.models.metauas.train import TrainConfig, train

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "specs" / "metauas_state_dict_keys.tsv"
if not MANIFEST.is_file():
    MANIFEST = Path("/work/shared/specs/metauas_state_dict_keys.tsv")
S = 64  # small input side keeps the suite fast; the architecture is size-independent


def _manifest() -> list[tuple[str, tuple[int, ...], str]]:
    if not MANIFEST.is_file():
        pytest.skip("official key manifest not available")
    rows = []
    for line in MANIFEST.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def _random_official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the official checkpoint's keys, shapes and dtypes, scaled so that signals survive the
    depth (He-scaled convs, BatchNorm near identity), which keeps the outputs input-dependent."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype in _manifest():
        if dtype == "int64":
            out[key] = torch.randint(0, 1000, shape, generator=g)
        elif len(shape) == 4:  # a small reduction scale keeps the (unscaled) attention logits moderate
            gain = 0.01 if key.startswith("alignment") else 2.0
            out[key] = torch.randn(shape, generator=g) * math.sqrt(gain / math.prod(shape[1:]))
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("weight"):  # BatchNorm scale
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = 0.1 * torch.randn(shape, generator=g)
    return out


@pytest.fixture(scope="module")
def official_sd() -> dict[str, torch.Tensor]:
    return _random_official_state_dict()


@pytest.fixture(scope="module")
def model(official_sd) -> MetaUAS:
    """The random official weights, with decoder BatchNorm statistics recomputed on random pairs: random running
    statistics make the decoder amplify float rounding ~1000x, which no trained checkpoint does."""
    m = MetaUAS(img_size=S).load_official_state_dict(official_sd)
    for module in m.decoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        m.train()(torch.rand(4, 3, S, S, generator=g), torch.rand(4, 3, S, S, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"query": torch.rand(3, 3, S, S, generator=g), "prompt": torch.rand(3, S, S, generator=g),
            "other": torch.rand(3, S, S, generator=g)}


# ------------------------------------------------------------------------------------------- checkpoint layout
def test_manifest_has_every_official_key_and_parameter_count(official_sd):
    assert len(official_sd) == 820
    m = MetaUAS(img_size=S)
    assert sum(p.numel() for p in m.parameters()) == 22_130_305  # the release's count [RUN in official_code.md]
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 22_130_305 - 17_548_616


def test_strict_load_of_official_layout_round_trips_every_tensor(official_sd):
    model = MetaUAS(img_size=S).load_official_state_dict(official_sd)
    back = model.official_state_dict()
    assert set(back) == set(official_sd)
    for key, value in official_sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert torch.equal(model.encoder.blocks[2][0].conv_dw.weight, official_sd["encoder._blocks.6._depthwise_conv.weight"])
    assert torch.equal(model.alignment[2].reduction.weight,
                       official_sd["alignment.2.alignment_layer.dimensionality_reduction.weight"])


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_official_load_errors_name_the_problem(official_sd, problem):
    sd = dict(official_sd)
    if problem == "missing":
        del sd["decoder.blocks.1.conv2.0.weight"]
        match = "missing.*decoder.blocks.1.conv2.0.weight"
    elif problem == "unexpected":
        sd["decoder.blocks.9.conv1.0.weight"] = torch.zeros(1)
        match = "unexpected.*decoder.blocks.9.conv1.0.weight"
    else:
        sd["mask_head.weight"] = torch.zeros(1, 64, 1, 1)
        match = "shape mismatch.*mask_head.weight"
    with pytest.raises(ValueError, match=match):
        MetaUAS(img_size=S).load_official_state_dict(sd)


def test_unknown_official_key_is_rejected_by_the_mapping(official_sd):
    with pytest.raises(ValueError, match="unexpected key.*encoder._fc.weight"):
        weights.official_to_adfast({**official_sd, "encoder._fc.weight": torch.zeros(1)})


def test_from_pretrained_reads_official_ckpt_and_ad_fast_formats(tmp_path, model, images):
    torch.save(model.official_state_dict(), tmp_path / "metauas-64.ckpt")
    loaded = MetaUAS.from_pretrained(tmp_path / "metauas-64.ckpt", img_size=S)
    expected = model(images["query"], images["prompt"].unsqueeze(0))
    assert torch.equal(loaded(images["query"], images["prompt"].unsqueeze(0)), expected)
    for name in ("m.safetensors", "m.pt"):
        model.save(tmp_path / name)
        again = MetaUAS.load(tmp_path / name)
        assert again.config == model.config
        assert torch.equal(again(images["query"], images["prompt"].unsqueeze(0)), expected)


def test_saved_config_is_restored(tmp_path):
    m = MetaUAS(img_size=96, alignment="hard", padding_version="0.7", threshold=0.3)
    m.save(tmp_path / "h.safetensors")
    assert MetaUAS.from_pretrained(tmp_path / "h.safetensors").config == m.config


def test_bad_checkpoint_files_raise_clear_errors(tmp_path, official_sd):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        MetaUAS.from_pretrained(tmp_path / "nope.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty or truncated"):
        MetaUAS.from_pretrained(tmp_path / "empty.ckpt")
    (tmp_path / "text.ckpt").write_text("this is not a checkpoint at all\n" * 10)
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        MetaUAS.from_pretrained(tmp_path / "text.ckpt")
    torch.save(official_sd, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        MetaUAS.from_pretrained(tmp_path / "cut.ckpt")
    torch.save({"a": [1, 2]}, tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="state_dict of tensors"):
        MetaUAS.from_pretrained(tmp_path / "list.ckpt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        MetaUAS.from_pretrained(tmp_path / "bad.safetensors")


def test_encoder_matches_efficientnet_pytorch_when_installed(official_sd):
    """Exact parity with the release's encoder package (run where ``efficientnet_pytorch`` is importable)."""
    efficientnet = pytest.importorskip("efficientnet_pytorch")
    version = tuple(int(v) for v in efficientnet.__version__.split(".")[:2])
    ref = efficientnet.EfficientNet.from_name("efficientnet-b4").eval()
    ref.load_state_dict({k[8:]: v for k, v in official_sd.items() if k.startswith("encoder.")}, strict=False)
    m = MetaUAS(img_size=S, padding_version="0.7" if version >= (0, 7) else "0.6.3").load_official_state_dict(official_sd)
    x = torch.randn(1, 3, S, S)
    with torch.no_grad():
        h = ref._swish(ref._bn0(ref._conv_stem(x)))
        expected = [h]
        for i, block in enumerate(ref._blocks):
            h = block(h)
            if i in (5, 9, 21, 31):
                expected.append(h)
        ours = m.encoder(x)
    for a, b in zip(expected, ours):  # float32 rounding only: within 1e-5 of each level's largest magnitude
        assert float((b - a).abs().max()) <= 1e-5 * float(a.abs().max())


def test_padding_versions_differ_only_from_level_3(official_sd):
    x = torch.randn(1, 3, S, S)
    a = MetaUAS(img_size=S).load_official_state_dict(official_sd).encoder(x)
    b = MetaUAS(img_size=S, padding_version="0.7").load_official_state_dict(official_sd).encoder(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.allclose(a[2], b[2])
    # block 6 (stride-2 5x5 depthwise): 0.6.3 pads (1, 2) per axis, 0.7 pads (2, 2); check 0.7 against F.conv2d
    block = b and MetaUAS(img_size=S, padding_version="0.7").encoder.blocks[2][0].conv_dw
    z = torch.randn(1, block.in_channels, 16, 16)
    expected = F.conv2d(F.pad(z, (2, 2, 2, 2)), block.weight, stride=2, groups=block.groups)
    torch.testing.assert_close(block(z), expected)


# ------------------------------------------------------------------------------------------------ components
def test_soft_alignment_matches_the_papers_formula():
    torch.manual_seed(0)
    fam = FeatureAlignment(8)
    q, p = torch.randn(2, 8, 3, 5), torch.randn(2, 8, 4, 2)
    qr = F.conv2d(q, fam.reduction.weight, fam.reduction.bias).flatten(2)  # [B, 4, Nq]
    kr = F.conv2d(p, fam.reduction.weight, fam.reduction.bias).flatten(2)  # [B, 4, Np]
    attention = torch.softmax(torch.einsum("bci,bcj->bij", qr, kr), dim=-1)  # no scaling
    aligned = torch.einsum("bij,bcj->bci", attention, p.flatten(2)).reshape(2, 8, 3, 5)
    torch.testing.assert_close(fam(q, p), torch.cat([q, aligned], dim=1), rtol=1e-5, atol=1e-6)


def test_hard_and_no_alignment_and_other_fusions():
    torch.manual_seed(0)
    q, p = torch.randn(1, 6, 2, 2), torch.randn(1, 6, 2, 2)
    assert torch.equal(FeatureAlignment(6, "none")(q, p), torch.cat([q, p], 1))
    assert torch.equal(FeatureAlignment(6, "none", "absdiff")(q, p), (q - p).abs())
    hard = FeatureAlignment(6, "hard", "add")
    qr = F.normalize(hard.reduction(q).flatten(2), dim=1)
    kr = F.normalize(hard.reduction(p).flatten(2), dim=1)
    index = torch.einsum("bci,bcj->bij", qr, kr).argmax(-1)[0]
    expected = q + p.flatten(2)[:, :, index].reshape(1, 6, 2, 2)
    torch.testing.assert_close(hard(q, p), expected)


def test_scse_formula():
    torch.manual_seed(0)
    m, x = SCSE(32), torch.randn(2, 32, 3, 4)
    c = torch.sigmoid(m.cSE[3](torch.relu(m.cSE[1](x.mean((2, 3), keepdim=True)))))
    s = torch.sigmoid(m.sSE[0](x))
    torch.testing.assert_close(m(x), x * c + x * s)
    assert m.cSE[1].out_channels == 2


def test_preprocessing_is_bilinear_align_corners_without_antialias(model):
    image = torch.rand(3, 50, 70)
    batch, sizes = model.prepare(image)
    assert sizes == [(50, 70)]
    expected = F.interpolate(image[None], size=(S, S), mode="bilinear", align_corners=True)
    torch.testing.assert_close(batch, expected)
    same = torch.rand(1, 3, S, S)
    assert torch.equal(model.prepare(same)[0], same)


# -------------------------------------------------------------------------------------------------- inference
def test_predict_shape_range_determinism_and_release_forward(model, images):
    r1 = model.predict(images["query"], images["prompt"])
    r2 = model.predict(images["query"], images["prompt"])
    assert r1.anomaly_map.shape == (3, 1, S, S) and r1.pred_score.shape == (3,)
    assert float(r1.anomaly_map.min()) >= 0.0 and float(r1.anomaly_map.max()) <= 1.0
    assert torch.equal(r1.anomaly_map, r2.anomaly_map)
    torch.testing.assert_close(r1.pred_score, r1.anomaly_map.flatten(1).max(1).values)
    assert torch.equal(r1.pred_mask, r1.anomaly_map >= model.threshold)
    with torch.no_grad():  # the release's forward; one prompt broadcast to the batch
        release = model(images["query"], images["prompt"].unsqueeze(0))
        release_pairs = model(images["query"], images["prompt"].expand(3, -1, -1, -1))
    torch.testing.assert_close(r1.anomaly_map, release, rtol=1e-5, atol=1e-6)
    pairs = model.predict_pairs(images["query"], [images["prompt"]] * 3)
    torch.testing.assert_close(pairs.anomaly_map, release_pairs, rtol=1e-5, atol=1e-6)


def test_kernel_and_reference_paths_agree(model, images):
    with ad_fast.ops.use_backend("reference"):
        reference = model.predict(images["query"], images["prompt"]).anomaly_map
    kernel = model.predict(images["query"], images["prompt"]).anomaly_map
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)


def test_prompt_cache_is_equivalent_and_refreshes(model, images):
    fresh = MetaUAS(img_size=S)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    encoding = fresh.encode_prompt(fresh.prepare(images["prompt"])[0])
    a = fresh.predict(images["query"], images["prompt"])
    cached = fresh._prompt_cache[1]
    b = fresh.predict(images["query"], images["prompt"].clone())
    assert fresh._prompt_cache[1] is cached  # same pixels: not re-encoded
    c = fresh.predict(images["query"], encoding)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.anomaly_map, c.anomaly_map)
    d = fresh.predict(images["query"], images["other"])
    assert fresh._prompt_cache[1] is not cached
    assert not torch.equal(fresh._prompt_cache[1].pooled, cached.pooled) and d.anomaly_map.shape == a.anomaly_map.shape


def test_grayscale_numpy_and_non_square_inputs(model):
    g = np.random.default_rng(0)
    gray = (g.random((48, 80)) * 255).astype(np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    prompt = (g.random((70, 40, 3)) * 255).astype(np.uint8)
    a = model.predict(gray, prompt)
    b = model.predict(rgb, prompt)
    assert torch.equal(a.anomaly_map, b.anomaly_map)
    resized = model.predict(gray, prompt, resize_to_input=True)
    assert resized.anomaly_map.shape == (1, 1, 48, 80) and resized.pred_mask.shape == (1, 1, 48, 80)
    mixed = model.predict([gray, rgb[:40]], prompt)
    assert mixed.anomaly_map.shape == (2, 1, S, S)
    with pytest.raises(ValueError, match="different sizes"):
        model.predict([gray, rgb[:40]], prompt, resize_to_input=True)


def test_k_shot_of_identical_prompts_equals_one_shot(model, images):
    one = model.predict(images["query"], images["prompt"]).anomaly_map
    three = model.predict(images["query"], [images["prompt"]] * 3).anomaly_map
    # 3 prompts are encoded as one batch: float32 conv rounding differs from batch 1 (~1e-6 relative in F5)
    torch.testing.assert_close(three, one, rtol=1e-3, atol=1e-4)
    two = model.predict(images["query"], [images["prompt"], images["other"]]).anomaly_map
    other = model.predict(images["query"], images["other"]).anomaly_map
    torch.testing.assert_close(two, (one + other) / 2, rtol=1e-3, atol=1e-4)


def test_prompt_pool_retrieval_k_shot_and_save_load(model, images, tmp_path):
    g = torch.Generator().manual_seed(3)
    normals = [torch.rand(3, S, S, generator=g) for _ in range(4)]
    pool = PromptPool.build(model, normals, labels=["a", "a", "b", "b"], batch_size=3)
    assert len(pool) == 4 and pool.classes == ["a", "b"]
    result = model.predict(images["query"], pool=pool, k=2)
    pooled_q = model.encode(images["query"])[-1].mean((2, 3))
    cosine = F.normalize(pooled_q, dim=1) @ F.normalize(pool.encoding.pooled, dim=1).T
    top = cosine.topk(2, dim=1)
    assert torch.equal(result.extras["prompt_indices"], top.indices)
    torch.testing.assert_close(result.extras["prompt_similarity"], top.values, rtol=1e-5, atol=1e-5)
    i, j = top.indices[0].tolist()
    by_hand = model.predict(images["query"][:1], [normals[i], normals[j]]).anomaly_map
    torch.testing.assert_close(result.anomaly_map[:1], by_hand, rtol=1e-3, atol=1e-4)
    only_b = model.predict(images["query"], pool=pool, label="b").extras["prompt_indices"]
    assert set(only_b.flatten().tolist()) <= {2, 3}
    twin = PromptPool.build(model, [normals[0]] * 2)
    torch.testing.assert_close(model.predict(images["query"], pool=twin, k=2).anomaly_map,
                               model.predict(images["query"], normals[0]).anomaly_map, rtol=1e-3, atol=1e-4)
    pool.save(tmp_path / "pool.safetensors")
    loaded = PromptPool.load(tmp_path / "pool.safetensors")
    assert loaded.labels == pool.labels and torch.equal(loaded.encoding.pooled, pool.encoding.pooled)
    assert torch.equal(model.predict(images["query"], pool=loaded, k=2).anomaly_map, result.anomaly_map)


def test_bad_inputs_raise_clear_errors(model, images, tmp_path):
    with pytest.raises(ValueError, match="img_size"):
        MetaUAS(img_size=100)
    with pytest.raises(ValueError, match="alignment"):
        MetaUAS(img_size=S, alignment="cross")
    with pytest.raises(ValueError, match="padding_version"):
        MetaUAS(img_size=S, padding_version="1.0")
    with pytest.raises(ValueError, match="exactly one of prompt"):
        model.predict(images["query"])
    with pytest.raises(TypeError, match="prompt"):
        model.predict(images["query"], 3.5)
    with pytest.raises(ValueError, match="query"):
        model.predict(torch.rand(5, S, S), images["prompt"])
    with pytest.raises(ValueError, match="one per query"):
        model.predict_pairs(images["query"], images["prompt"])
    pool = PromptPool.build(model, [images["prompt"]], labels=["a"])
    with pytest.raises(ValueError, match="k: expected"):
        model.predict(images["query"], pool=pool, k=2)
    with pytest.raises(ValueError, match="no prompt of class 'z'"):
        model.predict(images["query"], pool=pool, label="z")
    with pytest.raises(ValueError, match="built for img_size"):
        MetaUAS(img_size=96).predict(images["query"], pool=pool)
    with pytest.raises(FileNotFoundError):
        PromptPool.load(tmp_path / "missing.safetensors")


# --------------------------------------------------------------------------------------------------- training
def test_local_change_pairs():
    images = [torch.rand(3, 40 + i, 50) for i in range(3)]
    data = ChangePairDataset(images, img_size=64, augment=None, seed=1)
    sample = data[0]
    changed = (sample["prompt"] != sample["query"]).any(0, keepdim=True)
    assert sample["mask"].any() and torch.equal(changed, sample["mask"] > 0)  # the mask is exactly the change
    again = data[0]
    assert all(torch.equal(sample[k], again[k]) for k in sample)
    augmented = ChangePairDataset(images, img_size=64, seed=1)[0]
    assert augmented["query"].shape == (3, 64, 64) and set(augmented["mask"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="at least two images"):
        ChangePairDataset(images[:1], img_size=64)


def test_instance_masks_from_a_folder_give_object_changes(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        label = np.zeros((64, 64), np.uint8)
        label[10:30, 20:40] = 1
        Image.fromarray(label).save(tmp_path / "mask" / f"{i}.png")
    sample = ChangePairDataset(tmp_path / "img", img_size=64, mask_dir=tmp_path / "mask", object_prob=1.0, augment=None)[0]
    assert torch.equal(sample["mask"][0, 10:30, 20:40], torch.ones(20, 20)) and float(sample["mask"].sum()) == 400


def test_training_loss_falls_on_a_tiny_synthetic_set():
    torch.manual_seed(0)
    m = MetaUAS(img_size=S)
    g = torch.Generator().manual_seed(0)
    data = ChangePairDataset([torch.rand(3, S, S, generator=g) for _ in range(2)], img_size=S, augment=None)
    before = m.alignment[0].reduction.weight.clone()
    losses = train(m, data, TrainConfig(epochs=6, batch_size=2, lr=1e-3))
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(before, m.alignment[0].reduction.weight)
    assert all(not p.requires_grad for p in m.encoder.parameters()) and not m.encoder.training


def test_registry_fit_builds_a_pool_that_is_saved_and_used(model, images, tmp_path):
    from ad_fast.data.dataset import AnomalyDataset, Record
    from ad_fast.data.images import save_image
    from ad_fast.models import create_model, load_model

    assert isinstance(create_model("metauas", img_size=S), MetaUAS)
    records = []
    for i, category in enumerate(["a", "a", "b"]):
        save_image(tmp_path / f"{i}.png", torch.rand(3, S, S))
        records.append(Record(tmp_path / f"{i}.png", None, 0, category, "good"))
    fitted = MetaUAS(img_size=S, k=2)
    fitted.load_state_dict(model.state_dict())
    fitted.fit(AnomalyDataset(records, size=S), validation=[tmp_path / "0.png"])  # no share held out of the pool
    assert fitted.pool.labels == ["a", "a", "b"]
    result = fitted.predict(images["query"])
    assert result.extras["prompt_indices"].shape == (3, 2)
    fitted.save(tmp_path / "fitted.safetensors")
    again = load_model(tmp_path / "fitted.safetensors")
    assert again.pool.labels == ["a", "a", "b"] and again.k == 2
    assert torch.equal(again.predict(images["query"]).anomaly_map, result.anomaly_map)
    with pytest.raises(ValueError, match="fit\\(\\) a pool first"):
        MetaUAS(img_size=S).predict(images["query"])
