"""OneNIP at 256: inference latency and one training step, batch 1 and 16, kernels vs references.

Random weights (timing does not depend on them). ``predict`` includes preprocessing, the backbone on query images,
pool retrieval (``ops.knn``), the transformer, the refiner and the scoring (``ops.anomaly_map``); the training step
covers the backbone on 3B images, the reconstruction/restoration streams, losses, backward, clipping and AdamW (data
synthesis excluded). The training step calls no ad_fast op, so its kernel and reference rows run the same code and
differ only by noise. ``test_predict_decoder_variant`` times the Tab. 4a ablation decoders (default backend).
"""

from __future__ import annotations

import pytest
import torch

from ad_fast import ops
from ad_fast.models.onenip import OneNIP
from ad_fast.models.onenip.training import training_loss
from bench_utils import pick, synchronized

IMG_SIZE = pick(256, 64)
BATCHES = pick((1, 16), (1, 2))


def _model(device: str, decoder_variant: str = "v2_fixed") -> OneNIP:
    torch.manual_seed(0)
    net = OneNIP(img_size=IMG_SIZE, kappa=1.0, decoder_variant=decoder_variant).to(device)
    net.set_prompts(list(torch.rand(4, 3, IMG_SIZE, IMG_SIZE)), ["a", "b", "c", "d"])
    return net


def _skip_without_kernels(impl: str) -> None:
    if impl == "kernel" and not ops.backend_info()["compiled"]:
        pytest.skip("ad_fast._C not built")


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def bench_device(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(bench_device):
    return _model(bench_device)


@pytest.fixture(scope="module", params=["uniad_query", "unidirectional"])
def ablation_model(request, bench_device):
    return _model(bench_device, request.param)


def _bench_predict(benchmark, model: OneNIP, batch: int, impl: str) -> None:
    device = model.device.type
    images = torch.rand(batch, 3, IMG_SIZE, IMG_SIZE, device=device)

    def run():
        with ops.use_backend(impl):
            return model.predict(images)

    benchmark.group = f"onenip predict {IMG_SIZE}px b{batch} {device}"
    result = benchmark(synchronized(run, device))
    assert result.anomaly_map.shape == (batch, 1, IMG_SIZE, IMG_SIZE)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_predict(benchmark, model, batch, impl):
    _skip_without_kernels(impl)
    _bench_predict(benchmark, model, batch, impl)


@pytest.mark.parametrize("batch", BATCHES)
def test_predict_decoder_variant(benchmark, ablation_model, batch):
    _bench_predict(benchmark, ablation_model, batch, "auto")


@pytest.mark.parametrize("batch", BATCHES)
def test_train_step(benchmark, model, batch):
    """One row per batch: the training step calls no ad_fast op (only aten), so there is no kernel/reference pair."""
    device = model.device.type
    images = {key: torch.rand(batch, 3, IMG_SIZE, IMG_SIZE, device=device) for key in ("image", "anomaly", "prompt")}
    images["mask"] = (torch.rand(batch, 1, IMG_SIZE, IMG_SIZE, device=device) > 0.9).float()
    optimizer = torch.optim.AdamW(model.reconstruction.parameters(), lr=1e-4, weight_decay=1e-4)

    def step():
        loss, _ = training_loss(model, model.reconstruction, images, jitter=20.0, dice_weight=0.5)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.reconstruction.parameters(), 0.1)
        optimizer.step()
        return loss

    model.train()
    benchmark.group = f"onenip train step {IMG_SIZE}px b{batch} {device}"
    try:
        loss = benchmark(synchronized(step, device))
    finally:
        model.eval()
    assert torch.isfinite(loss)
