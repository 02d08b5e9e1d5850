"""OneNIP: release key layout, neighbour mask, attention wiring, training signal, checkpoints, backends, bad input.

No pretrained weights are available offline, so the trained-model tests use a randomly initialised backbone whose
BatchNorm statistics are re-estimated on the (generated) normal training images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ad_fast import ops
from ad_fast._extension import has_ops
from ad_fast.data.dataset import AnomalyDataset, Record
from ad_fast.data.images import save_image
from ad_fast.models import load_model
from ad_fast.models.onenip import OneNIP
from ad_fast.models.onenip.attention import LearnedPositionEmbedding, neighbour_mask
from ad_fast.models.onenip.backbone import fuse_features
from ad_fast.models.onenip.training import PromptedAnomalyDataset, dice_loss
from ad_fast.models.onenip.transformer import BidirectionalLayer, EncoderLayer

# Keys, shapes and dtypes of the release's 256 checkpoint (module.backbone.* lukemelas names, module.reconstruction.*).
KEYS_TSV = Path(__file__).parent / "data" / "onenip_state_dict_keys_256.tsv"
SIZE = 64  # 4 x 4 tokens: the smallest size with a non-trivial neighbour mask


# ------------------------------------------------------------------------------------------------- fixtures
def _release_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the release checkpoint's keys, shapes and dtypes (``module.`` prefixed)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for line in KEYS_TSV.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        shape = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
        state[key] = (torch.randn(shape, generator=generator) if dtype == "float32"
                      else torch.randint(0, 5, shape, generator=generator))
    return state


def _generated_images(kind: str, count: int, seed: int) -> list[torch.Tensor]:
    """Two visually distinct normal classes: vertical stripes and a centred blob, with pixel noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images = []
    for _ in range(count):
        if kind == "stripes":
            base = 0.5 + 0.4 * np.sin(2 * np.pi * rng.uniform(3, 4) * xx + rng.uniform(0, 2 * np.pi))
            image = np.stack([base, 0.6 * base + 0.2, np.full_like(base, 0.3)])
        else:
            cy, cx = rng.uniform(0.4, 0.6, 2)
            base = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
            image = np.stack([0.2 + 0.6 * base, np.full_like(base, 0.3), 0.8 - 0.5 * base])
        images.append(torch.tensor((image + rng.normal(0, 0.02, image.shape)).clip(0, 1), dtype=torch.float32))
    return images


def _calibrate_backbone_bn(model: OneNIP, images: list[torch.Tensor]) -> None:
    """Re-estimate the random backbone's BatchNorm statistics on ``images`` (stands in for ImageNet weights)."""
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum, bn.training = None, True
    with torch.no_grad():
        model.backbone((torch.stack(images) - model.pixel_mean) / model.pixel_std)
    for bn in norms:
        bn.training = False


def _normal_and_anomalous_errors(model: OneNIP, images: dict[str, list[torch.Tensor]], seed: int):
    """Per sample, mean ||F - F_hat|| over its synthetic-anomaly region: (on the normal image, on its anomalous copy)."""
    dataset = PromptedAnomalyDataset(images, SIZE, seed=seed)
    samples = [dataset[i] for i in range(len(dataset))]
    count = len(samples)
    with torch.no_grad():
        features = model.extract(torch.stack([s[key] for key in ("image", "anomaly", "prompt") for s in samples]))
        prompts = features[2 * count:]
        reconstruction, _ = model(features[:2 * count], torch.cat([prompts, prompts]))
    error = (reconstruction - features[:2 * count]).norm(dim=1)  # [2 count, h, w]
    masks = F.adaptive_avg_pool2d(torch.stack([s["mask"] for s in samples]), error.shape[-2:])[:, 0] > 0.1
    keep = [i for i in range(count) if masks[i].any()]
    normal = np.array([float(error[i][masks[i]].mean()) for i in keep])
    anomalous = np.array([float(error[count + i][masks[i]].mean()) for i in keep])
    return normal, anomalous


@pytest.fixture(scope="module")
def train_images() -> dict[str, list[torch.Tensor]]:
    return {"stripes": _generated_images("stripes", 6, 0), "blob": _generated_images("blob", 6, 1)}


def train_briefly(train_images: dict, **options) -> tuple:
    """(OneNIP(**options) after a few training steps, held-out images, normal-region errors before training, history)."""
    torch.manual_seed(0)
    model = OneNIP(img_size=SIZE, **options)
    _calibrate_backbone_bn(model, train_images["stripes"][:3] + train_images["blob"][:3])
    held_out = {"stripes": _generated_images("stripes", 4, 10), "blob": _generated_images("blob", 4, 11)}
    model.eval()
    before, _ = _normal_and_anomalous_errors(model, held_out, seed=7)
    history = model.fit(train_images, epochs=100, max_steps=6, batch_size=2, lr=1e-3, progress=False,
                        calibration_images=4, seed=1).history
    return model, held_out, before, history


@pytest.fixture(scope="module")
def trained(train_images):
    return train_briefly(train_images)


# ------------------------------------------------------------------------------------------ neighbour mask
def _brute_force_mask(height: int, width: int, n_h: int, n_w: int) -> torch.Tensor:
    mask = torch.zeros(height * width, height * width, dtype=torch.bool)
    for u in range(height * width):
        for v in range(height * width):
            ru, cu, rv, cv = u // width, u % width, v // width, v % width
            mask[u, v] = abs(ru - rv) <= n_h // 2 and abs(cu - cv) <= n_w // 2
    return mask


@pytest.mark.parametrize("height,width", [(14, 14), (16, 16), (20, 20), (4, 4), (3, 7), (9, 2)])
def test_neighbour_mask_matches_brute_force(height, width):
    expected = _brute_force_mask(height, width, height // 2, width // 2)
    assert torch.equal(neighbour_mask(height, width), expected)


@pytest.mark.parametrize("size,window", [(14, 7), (16, 9), (20, 11)])
def test_neighbour_window_sizes_of_the_release(size, window):
    mask = neighbour_mask(size, size)
    centre = (size // 2) * size + size // 2
    assert int(mask[centre].sum()) == window * window  # interior query
    corner_reach = window // 2 + 1
    assert int(mask[0].sum()) == corner_reach * corner_reach  # clipped at the border


def test_neighbour_mask_custom_and_rejected_windows():
    assert torch.equal(neighbour_mask(5, 6, (0, 0)), torch.eye(30, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks every key"):
        neighbour_mask(1, 1)
    with pytest.raises(ValueError, match="masks every key"):
        neighbour_mask(4, 4, (4, 4))
    with pytest.raises(ValueError, match="height, width"):
        neighbour_mask(0, 3)


# ------------------------------------------------------------------------------------- transformer wiring
def _explicit_attention(attn: torch.nn.MultiheadAttention, q_in, k_in, v_in, mask) -> torch.Tensor:
    """Multi-head attention written out (sequence-first ``[N, B, d]``; mask True = forbidden)."""
    d, heads = attn.embed_dim, attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.split(d)
    b_q, b_k, b_v = attn.in_proj_bias.split(d)
    q, k, v = (F.linear(x, w, b) for x, w, b in ((q_in, w_q, b_q), (k_in, w_k, b_k), (v_in, w_v, b_v)))
    n, batch = q.shape[:2]
    split = lambda t: t.reshape(t.shape[0], batch * heads, d // heads).transpose(0, 1)  # noqa: E731
    logits = split(q) @ split(k).transpose(1, 2) / math.sqrt(d // heads)
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    out = (logits.softmax(-1) @ split(v)).transpose(0, 1).reshape(n, batch, d)
    return attn.out_proj(out)


def test_encoder_layer_matches_explicit_post_norm_math():
    torch.manual_seed(1)
    layer = EncoderLayer(32, 4, 64, 0.1).eval()
    x, pos = torch.randn(12, 3, 32), torch.randn(12, 1, 32)
    mask = neighbour_mask(3, 4)
    with torch.no_grad():
        y = layer.norm1(x + _explicit_attention(layer.self_attn, x + pos, x + pos, x, mask))
        expected = layer.norm2(y + layer.linear2(F.relu(layer.linear1(y))))
        torch.testing.assert_close(layer(x, pos, mask), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["v2_fixed", "v1_paper"])
def test_bidirectional_layer_matches_explicit_math(variant):
    torch.manual_seed(2)
    layer = BidirectionalLayer(32, 4, 64, 0.1, variant).eval()
    prompt, image, pos = torch.randn(12, 2, 32), torch.randn(12, 2, 32), torch.randn(12, 1, 32)
    mask = neighbour_mask(3, 4)
    with torch.no_grad():
        p = layer.norm1(prompt + _explicit_attention(layer.cross_attn_prompt_to_image, prompt + pos, image + pos,
                                                     image, mask))
        mlp = layer.mlp.lin2(F.relu(layer.mlp.lin1(p)))
        p = layer.norm2(p + mlp)
        update = mlp if variant == "v1_paper" else _explicit_attention(
            layer.cross_attn_image_to_prompt, image + pos, p + pos, p, mask)
        x = layer.norm3(image + update)
        got_p, got_x = layer(prompt, image, pos, mask)
    torch.testing.assert_close(got_p, p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_x, x, rtol=1e-5, atol=1e-5)


def test_positional_embedding_is_column_then_row_in_raster_order():
    embed = LearnedPositionEmbedding(3, 5, 8)
    pos = embed()
    assert pos.shape == (15, 1, 8)
    for i in range(3):
        for j in range(5):
            torch.testing.assert_close(pos[i * 5 + j, 0], torch.cat([embed.col_embed.weight[j],
                                                                     embed.row_embed.weight[i]]))


def test_neck_resizes_with_align_corners_and_concatenates():
    feats = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip((24, 32, 56, 160), (2, 4, 8, 16))]
    fused = fuse_features(feats)
    assert fused.shape == (2, 272, 4, 4)
    # align_corners=True point sampling: corners of the 32x32 map land exactly on the 4x4 corners.
    torch.testing.assert_close(fused[:, :24, 0, 0], feats[0][:, :, 0, 0])
    torch.testing.assert_close(fused[:, :24, -1, -1], feats[0][:, :, -1, -1])
    torch.testing.assert_close(fused[:, 112:], feats[3])


def test_release_dice_loss_has_no_factor_two():
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    expected = 1 - (0.5 + 1) / (0.5 + 1 + 1)
    torch.testing.assert_close(dice_loss(p, t), torch.tensor([expected]))


# ---------------------------------------------------------------------------------- release checkpoints
@pytest.fixture(scope="module")
def release_model():
    return OneNIP(img_size=256)


def test_release_state_dict_loads_strictly(release_model, tmp_path):
    state = _release_state_dict()
    assert len(state) == 856
    release_model.load_release_state_dict(state)
    torch.testing.assert_close(release_model.reconstruction.input_proj.weight,
                               state["module.reconstruction.input_proj.weight"])
    torch.testing.assert_close(  # lukemelas block 21 = last block of timm stage 4 (inverted residual)
        release_model.backbone.encoder.blocks[4][5].conv_pwl.weight, state["module.backbone._blocks.21._project_conv.weight"])
    torch.testing.assert_close(release_model.backbone.encoder.blocks[0][1].conv_pw.weight,
                               state["module.backbone._blocks.1._project_conv.weight"])
    torch.testing.assert_close(release_model.reconstruction.seghead.upconv2[1].running_var,
                               state["module.reconstruction.seghead.upconv2.1.running_var"])
    # ckpt.pkl layout on disk: {"state_dict": ...}; img_size comes from the positional tables.
    path = tmp_path / "ckpt.pkl"
    torch.save({"state_dict": state}, path)
    loaded = OneNIP.from_pretrained(path)
    assert loaded.img_size == 256 and loaded.kappa is None
    torch.testing.assert_close(loaded.reconstruction.pos_embed.col_embed.weight,
                               state["module.reconstruction.pos_embed.col_embed.weight"])


def test_release_state_dict_mismatches_are_named(release_model):
    state = _release_state_dict()
    missing = {k: v for k, v in state.items() if "decoder.norm.weight" not in k}
    with pytest.raises(ValueError, match="missing key"):
        release_model.load_release_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected key"):
        release_model.load_release_state_dict({**state, "module.reconstruction.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected key"):
        release_model.load_release_state_dict({**state, "module.backbone._blocks.40._bn0.weight": torch.zeros(1)})
    bad = dict(state)
    bad["module.reconstruction.output_proj.weight"] = torch.zeros(272, 128)
    with pytest.raises(ValueError, match="shape mismatch"):
        release_model.load_release_state_dict(bad)
    bare = {k.removeprefix("module."): v for k, v in state.items()}
    release_model.load_release_state_dict(bare)  # no DDP prefix is fine too


def test_release_checkpoint_at_another_resolution_is_rejected(tmp_path):
    path = tmp_path / "ckpt.pkl"
    torch.save({"state_dict": _release_state_dict()}, path)
    with pytest.raises(ValueError, match="shape mismatch"):
        OneNIP.from_pretrained(path, img_size=224)


# ------------------------------------------------------------------------------------------------ training
def test_training_lowers_error_on_normal_below_anomalous_regions(trained):
    model, held_out, before, history = trained
    assert len(history["loss"]) >= 1 and all(np.isfinite(history["loss"]))
    normal, anomalous = _normal_and_anomalous_errors(model, held_out, seed=7)
    assert normal.size >= 3
    assert normal.mean() < before.mean()  # training reduced the normal reconstruction error
    assert anomalous.mean() > 2 * normal.mean()
    assert (anomalous > normal).mean() >= 0.8


def test_fit_fills_the_prompt_pool_and_kappa(trained, train_images):
    model = trained[0]
    assert sorted(model.prompt_labels) == ["blob", "stripes"]
    assert model.kappa is not None and model.kappa > 0
    result = model.predict(train_images["stripes"][:2] + train_images["blob"][:1])
    assert result.anomaly_map.shape == (3, 1, SIZE, SIZE) and result.pred_score.shape == (3,)
    assert torch.isfinite(result.anomaly_map).all()
    assert model.decision is not None and result.raw_map is not None  # fit learned thresholds
    expected = 0.5 * result.extras["rec_map"] + 0.5 * model.kappa * result.extras["refiner_map"]
    torch.testing.assert_close(result.raw_map, expected)
    pooled = F.avg_pool2d(result.raw_map, 16, stride=1).flatten(1).amax(1)
    torch.testing.assert_close(result.raw_score, pooled)
    assert result.extras["prompt_index"].shape == (3,)
    with torch.inference_mode():  # the pool path encodes each distinct prompt once; same maps as one per query
        features = model.extract(model.prepare(train_images["stripes"][:2] + train_images["blob"][:1])[0])
        rec_map, refiner_map = model.score_maps(features, model.prompt_features[result.extras["prompt_index"]])
    torch.testing.assert_close(result.extras["rec_map"], rec_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.extras["refiner_map"], refiner_map, rtol=1e-5, atol=1e-5)
    only_blob = model.predict(train_images["stripes"][:1], label="blob")
    assert only_blob.extras["prompt_label"] == ["blob"]


def test_given_prompt_and_resize_to_input(trained, train_images):
    model = trained[0]
    image = F.interpolate(train_images["blob"][0][None], size=(80, 96), mode="bilinear")[0]
    result = model.predict([image, image], prompt=train_images["blob"][1], resize_to_input=True)
    assert result.anomaly_map.shape == (2, 1, 80, 96)
    torch.testing.assert_close(result.pred_score[0], result.pred_score[1])


def test_save_load_round_trip(trained, train_images, tmp_path):
    model = trained[0]
    images = train_images["stripes"][:1] + train_images["blob"][:1]
    expected = model.predict(images)
    for name in ("onenip.pt", "onenip.safetensors"):
        model.save(tmp_path / name)
        loaded = OneNIP.from_pretrained(tmp_path / name)
        assert loaded.config == model.config and loaded.prompt_labels == model.prompt_labels
        got = loaded.predict(images)
        torch.testing.assert_close(got.anomaly_map, expected.anomaly_map)
        torch.testing.assert_close(got.pred_score, expected.pred_score)
    assert isinstance(load_model(tmp_path / "onenip.pt"), OneNIP)  # the file records its method


@pytest.mark.skipif(not has_ops(), reason="ad_fast._C not built")
def test_kernel_and_reference_paths_agree(trained, train_images):
    model = trained[0]
    images = train_images["stripes"][2:4] + train_images["blob"][2:4]
    with ops.use_backend("kernel"):
        kernel = model.predict(images)
    with ops.use_backend("reference"):
        reference = model.predict(images)
    assert torch.equal(kernel.extras["prompt_index"], reference.extras["prompt_index"])
    torch.testing.assert_close(kernel.anomaly_map, reference.anomaly_map, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel.pred_score, reference.pred_score, rtol=1e-5, atol=1e-5)


def test_training_resumes_from_its_checkpoint(train_images, tmp_path):
    images = {"stripes": train_images["stripes"][:1], "blob": train_images["blob"][:1]}
    options = dict(batch_size=2, progress=False, calibration_images=1, checkpoint_dir=str(tmp_path))
    first = OneNIP(img_size=SIZE)
    history = first.fit(images, epochs=1, **options).history
    assert history["epoch"] == [0] and (tmp_path / "last.pt").is_file() and (tmp_path / "onenip.pt").is_file()
    second = OneNIP(img_size=SIZE)
    history = second.fit(images, epochs=2, **options).history
    assert history["epoch"] == [0, 1]  # epoch 0 came from the checkpoint
    assert len(history["loss"]) == 2
    wrong = OneNIP(img_size=SIZE, decoder_variant="v1_paper")
    with pytest.raises(ValueError, match="does not match"):
        wrong.fit(images, epochs=3, **options)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.manual_seed(rank)  # different random backbones: fit must make every rank use rank 0's
    images = {"a": _generated_images("stripes", 2, 0), "b": _generated_images("blob", 2, 1)}
    model = OneNIP(img_size=SIZE)
    model.fit(images, epochs=1, batch_size=1, max_steps=2, progress=False, calibration_images=2, device="cpu")
    torch.save({k: v.clone() for k, v in model.state_dict().items()} | {"kappa": torch.tensor(model.kappa)},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_fit_under_ddp_keeps_ranks_identical(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


@pytest.mark.cuda
def test_cuda_predict_matches_cpu(trained, train_images):
    model = trained[0]
    images = train_images["stripes"][:2]
    model.cpu()  # the module-scoped fixture may have been moved by an earlier test
    cpu = model.predict(images)
    assert cpu.anomaly_map.device.type == "cpu"
    model.cuda()
    try:
        gpu = model.predict(images, result_device="cuda")
    finally:
        model.cpu()
    assert gpu.anomaly_map.is_cuda
    torch.testing.assert_close(gpu.anomaly_map.cpu(), cpu.anomaly_map, rtol=1e-3, atol=1e-3)


def test_fit_reads_the_normal_images_of_a_dataset(tmp_path):
    from ad_fast.models.onenip.training import _check_images

    records = []
    for i, (category, label) in enumerate([("a", 0), ("a", 1), ("b", 0)]):
        path = tmp_path / f"{i}.png"
        save_image(path, torch.rand(3, 8, 8))
        records.append(Record(path, None, label, category, "good" if label == 0 else "crack"))
    grouped = _check_images(AnomalyDataset(records, size=8), "train_images")
    assert grouped == {"a": [records[0].image_path], "b": [records[2].image_path]}
    with pytest.raises(ValueError, match=r"holds no normal \(label 0\) images"):
        _check_images(AnomalyDataset(records[1:2], size=8), "train_images")


# ----------------------------------------------------------------------------------------------- bad input
def test_bad_arguments_raise_clear_errors(trained, train_images, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="img_size"):
        OneNIP(img_size=100)
    with pytest.raises(ValueError, match="backbone"):
        OneNIP(img_size=SIZE, backbone="resnet18")
    with pytest.raises(ValueError, match="alpha"):
        OneNIP(img_size=SIZE, alpha=1.5)
    with pytest.raises(ValueError, match="decoder_variant"):
        OneNIP(img_size=SIZE, decoder_variant="v3")
    with pytest.raises(ValueError, match="prompt"):
        model.predict(train_images["blob"][:3], prompt=train_images["blob"][:2])
    with pytest.raises(ValueError, match="label"):
        model.predict(train_images["blob"][:1], label="screw")
    with pytest.raises(TypeError, match="images"):
        model.predict(42)
    with pytest.raises(ValueError, match="images"):
        model.extract(torch.rand(1, 3, 32, 32))
    with pytest.raises(TypeError, match="train_images"):
        model.fit([train_images["blob"][0]])
    with pytest.raises(TypeError, match="unexpected option"):
        model.fit(train_images, learning_rate=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        model.fit(train_images, batch_size=0)
    with pytest.raises(FileNotFoundError):
        OneNIP.from_pretrained(tmp_path / "missing.pkl")
    (tmp_path / "corrupt.pkl").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable"):
        OneNIP.from_pretrained(tmp_path / "corrupt.pkl")


def test_uncalibrated_or_promptless_model_says_what_is_missing(trained, train_images):
    model = trained[0]
    kappa, labels = model.kappa, model.prompt_labels
    try:
        model.kappa, model.prompt_labels = None, []
        with pytest.raises(ValueError, match="kappa"):
            model.predict(train_images["blob"][:1], prompt=train_images["blob"][1])
        with pytest.raises(ValueError, match="prompt pool is empty"):
            model.predict(train_images["blob"][:1], kappa=1.0)
    finally:
        model.kappa, model.prompt_labels = kappa, labels
